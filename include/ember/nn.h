/*
 * ember/nn.h: layers (torch.nn modules) and parameter lists.
 *
 * How to use this header
 * ----------------------
 * A layer is an opaque handle (em_nn *) with explicit _new/_free: layers are not owned by scopes.
 * Layers are initialised exactly as torch.nn initialises them, so the same seed gives the same
 * weights as PyTorch:
 *
 *     em_manual_seed(0);
 *     em_nn *net = EM_NN_SEQUENTIAL(em_nn_linear(4, 8, true), em_nn_tanh(), em_nn_linear(8, 1, true));
 *     em_tensor *y = em_nn_forward(net, x);        // owned by the open scope
 *     ...
 *     em_nn_free(net);                              // frees the children too
 *
 * Parameters and buffers have torch's names ("0.weight", "2.bias", "G.1.weight" inside a container)
 * and are reached through borrowed handles that stay valid until the layer is freed.
 *
 * A layer of your own is a state pointer plus a forward function in C (em_nn_custom): register its
 * parameters with em_nn_register_parameter and its sub-layers with em_nn_add.
 *
 * Constructors that take other layers take ownership of them, also when they fail, so a nested
 * constructor expression never leaks. A constructor given a NULL child returns NULL (keeping the
 * first error message) after freeing the other children.
 */
#ifndef EMBER_NN_H
#define EMBER_NN_H

#include "tensor.h"

EM_BEGIN_DECLS

/** An opaque layer handle (a torch::nn::Module). */
typedef struct em_nn em_nn;

/** An ordered list of parameter tensors (what an optimizer or a clipping function works on). */
typedef struct em_params em_params;

/* ---- parameter lists -------------------------------------------------------------------------- */

/** An empty list. The caller frees it with em_params_free(). Errors: NULL when out of memory. */
EM_API em_params *em_params_new(void);
/**
 * Append a parameter (the list keeps its own reference; `t` stays the caller's).
 * Errors: EM_EINVAL for NULL arguments.
 */
EM_API em_status em_params_add(em_params *p, const em_tensor *t);
/** Append every parameter of `m`, in em_nn_parameter() order. Errors: EM_EINVAL for NULL. */
EM_API em_status em_params_add_nn(em_params *p, const em_nn *m);
/** Number of parameters; 0 for NULL. */
EM_API size_t em_params_size(const em_params *p);
/** The i-th parameter. Borrowed: valid until the list is freed. Errors: NULL when i is out of range. */
EM_API em_tensor *em_params_get(const em_params *p, size_t i);
/**
 * Free the list (not the parameters) and the handles em_params_get gave out. NULL is ignored.
 * Misuse (best effort, common.h): freeing it twice, or passing it anywhere after, records
 * EM_EMISUSE ("em_params_free: this parameter list was already freed ...") and does nothing; the
 * freed memory is kept from reuse for the next 4096 frees on the thread.
 */
EM_API void em_params_free(em_params *p);

/* ---- built-in layers -------------------------------------------------------------------------
 * Each returns a new layer; the caller frees it with em_nn_free() (or hands it to a container).
 * Errors: NULL with a message for a size <= 0 or an out-of-range option. */

/** torch.nn.Linear(in_features, out_features, bias): y = x W^T + b; weight [out, in]. */
EM_API em_nn *em_nn_linear(int64_t in_features, int64_t out_features, bool bias);

/** Options of the convolutions. All-zero (or NULL) = torch's defaults; 0 means 1 where noted. */
typedef struct em_conv_opts {
    int64_t stride;         /* 0 = 1 */
    int64_t padding;        /* 0 */
    int64_t output_padding; /* 0 (transposed convolution only) */
    int64_t dilation;       /* 0 = 1 */
    int64_t groups;         /* 0 = 1 */
    bool no_bias;           /* false: the layer has a bias, as in torch */
} em_conv_opts;

/** torch.nn.Conv2d(in, out, kernel_size, ...) with a square kernel; input [N, C, H, W]. */
EM_API em_nn *em_nn_conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size,
                           const em_conv_opts *opts);
/** torch.nn.ConvTranspose2d(in, out, kernel_size, ...) with a square kernel. */
EM_API em_nn *em_nn_conv_transpose2d(int64_t in_channels, int64_t out_channels,
                                     int64_t kernel_size, const em_conv_opts *opts);

/** Options of the normalisation layers: start from EM_NORM_OPTS_INIT (torch's defaults). */
typedef struct em_norm_opts {
    int version;              /* EM_NORM_OPTS_VERSION, set by the INIT */
    double eps;               /* 1e-5 */
    double momentum;          /* 0.1 (batch norm only) */
    bool affine;              /* true (LayerNorm: elementwise_affine) */
    bool track_running_stats; /* true (batch norm only) */
} em_norm_opts;
#define EM_NORM_OPTS_VERSION 1
#define EM_NORM_OPTS_INIT \
    {.version = EM_NORM_OPTS_VERSION, .eps = 1e-5, .momentum = 0.1, .affine = true, .track_running_stats = true}

/** torch.nn.BatchNorm1d(num_features); opts NULL = defaults. Errors: NULL for a bad opts version. */
EM_API em_nn *em_nn_batchnorm1d(int64_t num_features, const em_norm_opts *opts);
/** torch.nn.BatchNorm2d(num_features); opts NULL = defaults. */
EM_API em_nn *em_nn_batchnorm2d(int64_t num_features, const em_norm_opts *opts);
/** torch.nn.LayerNorm(normalized_shape); opts NULL = defaults (eps, affine used). */
EM_API em_nn *em_nn_layernorm(const int64_t *normalized_shape, int ndim, const em_norm_opts *opts);
/** torch.nn.Dropout(p). Errors: NULL when p is outside [0, 1]. */
EM_API em_nn *em_nn_dropout(double p);
/** torch.nn.Embedding(num_embeddings, embedding_dim); input int64 indices. */
EM_API em_nn *em_nn_embedding(int64_t num_embeddings, int64_t embedding_dim);

/* activation and reshaping layers (no parameters) */
EM_API em_nn *em_nn_relu(void);
EM_API em_nn *em_nn_leaky_relu(double negative_slope);
EM_API em_nn *em_nn_tanh(void);
EM_API em_nn *em_nn_sigmoid(void);
EM_API em_nn *em_nn_gelu(void);
EM_API em_nn *em_nn_softmax(int dim);
/** torch.nn.Flatten(start_dim, end_dim) (torch's defaults: 1, -1). */
EM_API em_nn *em_nn_flatten(int start_dim, int end_dim);

/* ---- containers -------------------------------------------------------------------------------- */

/**
 * torch.nn.Sequential over children[0..n-1], named "0", "1", ...
 * Takes ownership of every child, also when it fails.
 * Errors: NULL when a child is NULL (the others are freed) or already belongs to a container.
 */
EM_API em_nn *em_nn_sequential(em_nn *const *children, size_t n);

/** em_nn_sequential() over its arguments, in C: EM_NN_SEQUENTIAL(em_nn_linear(2, 4, true), em_nn_relu()). */
#define EM_NN_SEQUENTIAL(...) \
    em_nn_sequential((em_nn *const[]){__VA_ARGS__}, sizeof((em_nn *const[]){__VA_ARGS__}) / sizeof(em_nn *))

/**
 * An empty container (torch.nn.Module with sub-modules and no forward of its own; calling
 * em_nn_forward on it is an error). Use it to group nets, e.g. "G" and "D".
 * The caller frees it with em_nn_free().
 */
EM_API em_nn *em_nn_container(void);

/**
 * Register `child` under `name` in `parent` (a container, a Sequential - appended, the name must
 * then be the next index - or a custom layer). Takes ownership of `child`, also when it fails.
 * Errors: EM_EINVAL for NULL, an empty name, a name containing '.', a name already used, or a
 * child that already has a parent.
 */
EM_API em_status em_nn_add(em_nn *parent, const char *name, em_nn *child);

/** The sub-layer registered under `name` (dotted paths allowed). Borrowed. NULL when absent. */
EM_API em_nn *em_nn_child(const em_nn *m, const char *name);

/* ---- layers written in C ---------------------------------------------------------------------- */

/** The operations of a layer written in C. */
typedef struct em_nn_ops {
    int version; /* EM_NN_OPS_VERSION of the header you compiled with */
    /** Required. Computes the output (owned by the open scope, as any op result); NULL = failure. */
    em_tensor *(*forward)(em_nn *self, const em_tensor *x);
    /** Optional: releases `state` when the layer is freed. */
    void (*destroy)(void *state);
    /* ---- version 1 ends here; new entries are appended below, never inserted ---- */
} em_nn_ops;
#define EM_NN_OPS_VERSION 1

/**
 * A layer whose forward is `ops->forward`; `state` is yours (em_nn_state() returns it).
 * `ops` must outlive the layer. Takes ownership of `state` (ops->destroy frees it), also when it fails.
 * Errors: NULL for a NULL ops or forward, or an ops version of 0 or newer than this library's.
 */
EM_API em_nn *em_nn_custom(const em_nn_ops *ops, void *state);
/** The state pointer given to em_nn_custom(); NULL for other layers. */
EM_API void *em_nn_state(const em_nn *m);

/**
 * Register a parameter named `name` holding a copy of `init`'s values (a new leaf tensor with
 * requires_grad set). Returns the parameter. Borrowed: valid until the layer is freed.
 * Errors: NULL for a bad name (empty, with '.', already used) or a non-float init.
 */
EM_API em_tensor *em_nn_register_parameter(em_nn *m, const char *name, const em_tensor *init);
/** Register a buffer (state saved with the layer, not trained), as em_nn_register_parameter. */
EM_API em_tensor *em_nn_register_buffer(em_nn *m, const char *name, const em_tensor *init);

/* ---- using layers ------------------------------------------------------------------------------ */

/**
 * Run the layer on `x`. torch: m(x)
 * Owned by the open scope; with no scope open, the caller frees it with em_tensor_free().
 * Errors: NULL with torch's message (shape mismatch, ...), prefixed with the layer's kind.
 */
EM_API em_tensor *em_nn_forward(em_nn *m, const em_tensor *x);

/** m.train(mode) for the layer and all its children. Errors: EM_EINVAL for NULL. */
EM_API em_status em_nn_train(em_nn *m, bool mode);
/** m.training; false for NULL. */
EM_API bool em_nn_is_training(const em_nn *m);
/** A short name of the layer kind: "Linear", "Sequential", "Custom", ... */
EM_API const char *em_nn_kind(const em_nn *m);

/** Number of parameters (recursively, torch's named_parameters() order). 0 for NULL. */
EM_API size_t em_nn_num_parameters(const em_nn *m);
/** The i-th parameter. Borrowed: valid until the layer is freed. NULL when out of range. */
EM_API em_tensor *em_nn_parameter(const em_nn *m, size_t i);
/** The i-th parameter's dotted name, e.g. "0.weight". Borrowed, as em_nn_parameter. */
EM_API const char *em_nn_parameter_name(const em_nn *m, size_t i);
/** Number of buffers (running_mean, ...). */
EM_API size_t em_nn_num_buffers(const em_nn *m);
/** The i-th buffer. Borrowed. */
EM_API em_tensor *em_nn_buffer(const em_nn *m, size_t i);
/** The i-th buffer's dotted name. Borrowed. */
EM_API const char *em_nn_buffer_name(const em_nn *m, size_t i);
/** The parameter or buffer named `name`. Borrowed. Errors: NULL (recorded) when there is none. */
EM_API em_tensor *em_nn_get(const em_nn *m, const char *name);

/**
 * Overwrite the parameter or buffer `name` with `count` values from `data` (row-major, `dtype`,
 * converted to the tensor's own dtype and device), without recording autograd history.
 * Errors: EM_EINVAL for an unknown name or when count differs from the tensor's numel.
 */
EM_API em_status em_nn_set(em_nn *m, const char *name, const void *data, em_dtype dtype, size_t count);

/** A new list of all parameters of `m`. The caller frees it with em_params_free(). */
EM_API em_params *em_nn_parameters(const em_nn *m);

/** m.to(device): moves parameters and buffers in place; borrowed handles stay valid. */
EM_API em_status em_nn_to_device(em_nn *m, em_device device);
/** m.to(dtype) for floating parameters and buffers. */
EM_API em_status em_nn_to_dtype(em_nn *m, em_dtype dtype);
/** m.zero_grad(set_to_none). */
EM_API em_status em_nn_zero_grad(em_nn *m, bool set_to_none);

/**
 * Free a layer and its children. Borrowed handles into it become invalid.
 * A layer registered in a container is freed with the container: freeing it alone records EM_EINVAL
 * and does nothing. NULL is ignored.
 * Misuse (best effort, common.h): freeing a layer twice (or a child after its container), or passing
 * a freed layer or one of its parameter handles anywhere, records EM_EMISUSE ("em_nn_free: this layer
 * was already freed ...") and does nothing; the freed memory is kept from reuse for the next 4096
 * frees on the thread.
 */
EM_API void em_nn_free(em_nn *m);

EM_END_DECLS

#endif /* EMBER_NN_H */
