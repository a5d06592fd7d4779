/*
 * ember/tensor.h: tensors, operations, autograd, scopes.
 *
 * How to use this header
 * ----------------------
 * A tensor is an opaque handle (em_tensor *) to one libtorch tensor. Functions that make a tensor
 * return a new handle; the handle is owned by the innermost open scope, so a training step never
 * frees its temporaries one by one:
 *
 *     em_scope_begin();
 *     em_tensor *h    = em_tanh(em_nn_forward(net, x));      // owned by the scope
 *     em_tensor *loss = em_mse_loss(h, y, EM_REDUCTION_MEAN);
 *     em_tensor *kept = em_keep(loss);                       // moved to the enclosing scope
 *     em_scope_end();                                        // h released; kept survives
 *
 * With no scope open, the caller owns what it gets and frees it with em_tensor_free().
 * The trainer opens a scope around every batch, so code in training_step never frees tensors.
 *
 * Errors follow ember/common.h: a failing function returns NULL and records the first message;
 * a NULL argument makes an op return NULL, keeping the message already recorded or, with none,
 * recording which argument was NULL ("em_mse_loss: argument 2 is NULL").
 *
 * Shapes are passed as (const int64_t *shape, int ndim); EM_SHAPE(2, 3) expands to both in C.
 */
#ifndef EMBER_TENSOR_H
#define EMBER_TENSOR_H

#include <stdio.h>

#include "common.h"

EM_BEGIN_DECLS

/* ---- types ------------------------------------------------------------------------------------ */

/** An opaque handle to one libtorch tensor. */
typedef struct em_tensor em_tensor;

/** An opaque random number generator (torch's CPU generator, mt19937-based). */
typedef struct em_generator em_generator;

/** Element types. EM_F32 is 0, so a zeroed em_tensor_opts means float32. */
typedef enum em_dtype {
    EM_F32 = 0,
    EM_F64,
    EM_F16,
    EM_BF16,
    EM_I64,
    EM_I32,
    EM_U8,
    EM_BOOL
} em_dtype;

/** Device kinds. EM_CPU is 0. */
typedef enum em_device_type { EM_CPU = 0, EM_CUDA = 1 } em_device_type;

/** A device: a kind and an index (the index is ignored for the CPU; -1 = current CUDA device). */
typedef struct em_device {
    em_device_type type;
    int index;
} em_device;

#define EM_DEVICE_CPU ((em_device){EM_CPU, 0})
#define EM_DEVICE_CUDA(i) ((em_device){EM_CUDA, (i)})

/** How a loss (or a reduction) combines its elements. EM_REDUCTION_MEAN is 0, torch's default. */
typedef enum em_reduction {
    EM_REDUCTION_MEAN = 0,
    EM_REDUCTION_SUM,
    EM_REDUCTION_NONE
} em_reduction;

/** Options for tensor factories. All-zero (or NULL) = float32 on the CPU, no gradient. */
typedef struct em_tensor_opts {
    em_dtype dtype;          /* EM_F32 */
    em_device device;        /* CPU */
    bool requires_grad;      /* false */
    em_generator *generator; /* NULL = the global generator (em_manual_seed) */
} em_tensor_opts;

/** Both arguments of a shape parameter pair, for C callers: em_zeros(EM_SHAPE(2, 3), NULL). */
#define EM_SHAPE(...) \
    (const int64_t[]){__VA_ARGS__}, (int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t))

/** The largest number of dimensions em_tensor_shape() reports. */
#define EM_MAX_DIMS 16

/* ---- scopes ----------------------------------------------------------------------------------- */

/**
 * Open a scope on this thread. Tensors created until the matching em_scope_end() belong to it.
 * Scopes nest. Never fails in practice: out of memory it records EM_ENOMEM, and the matching
 * em_scope_end() then closes nothing (tensors made meanwhile belong to the enclosing scope).
 */
EM_API void em_scope_begin(void);

/**
 * Close the innermost scope and free every tensor it still owns. Their handles are freed handles from
 * then on: one returned from a helper after its scope ended is reported like any freed handle
 * (EM_EMISUSE, "argument N is a freed tensor"); em_keep() or em_tensor_persist()
 * is how a tensor outlives its scope.
 * Errors: EM_ESTATE when no scope is open (an unbalanced end); EM_EMISUSE when the innermost open
 * scope is one the trainer opened (around each batch) rather than one of yours - an unbalanced end
 * inside a training step. Nothing is freed then.
 */
EM_API em_status em_scope_end(void);

/** How many scopes are open on this thread (0 = none). */
EM_API int em_scope_depth(void);

/**
 * Move `t` from the innermost scope to the enclosing one (JNI's PopLocalFrame(result)), so a helper
 * can return a result from inside its own scope. With no enclosing scope the caller owns it.
 * Returns `t`. A tensor not owned by the innermost scope is returned unchanged.
 * Given NULL it returns NULL.
 */
EM_API em_tensor *em_keep(em_tensor *t);

/**
 * Free a tensor handle the caller owns. A tensor a scope owns may be freed early: it is taken out of
 * its scope first, so the scope's end does not free it again (chosen over refusing, as Python's
 * `del t` inside a block is fine).
 * The data is released when no other handle or autograd graph refers to it.
 * Handles borrowed from a layer or an optimizer (em_nn_parameter, ...) must not be freed: doing so
 * records EM_EINVAL and changes nothing. NULL is ignored.
 * Misuse (best effort, see common.h): freeing a handle twice, or one its scope already released,
 * records EM_EMISUSE ("em_tensor_free: this tensor was already freed ...") and does nothing. Freed
 * handles are poisoned and their memory is kept from reuse for the next 4096 frees on the thread,
 * so this is caught reliably within that window; after it the memory may be reused, and the double
 * free is then undefined behaviour as in any C API.
 */
EM_API void em_tensor_free(em_tensor *t);

/**
 * Take `t` out of whatever scope owns it: the caller owns it from now on and frees it with
 * em_tensor_free() (torch's idiom of optimizer state created lazily inside a step: the state tensor
 * is made inside the step's scope and must outlive it). A tensor the caller already owns is returned
 * unchanged. Returns `t`.
 * Errors: NULL for a handle borrowed from a layer, a parameter list or an optimizer (EM_EINVAL: its
 * owner frees it; em_tensor_persist(em_tensor_ref(t)) gives a handle of your own), and for a freed
 * handle (EM_EMISUSE).
 */
EM_API em_tensor *em_tensor_persist(em_tensor *t);

/**
 * A second handle to the same tensor (shares data and autograd history; torch: `b = a`).
 * Owned by the open scope; with no scope open, the caller frees it with em_tensor_free().
 */
EM_API em_tensor *em_tensor_ref(const em_tensor *t);

/* ---- random numbers --------------------------------------------------------------------------- */

/**
 * Seed the global generator. torch: torch.manual_seed(seed). Same seed, same numbers as PyTorch's
 * CPU generator: after em_manual_seed(0), em_randn(EM_SHAPE(5), NULL) gives
 * [1.5409961, -0.2934289, -2.1787894, 0.5684313, -1.0845224].
 */
EM_API void em_manual_seed(uint64_t seed);

/**
 * A new generator seeded with `seed`, independent of the global one. torch: torch.Generator().manual_seed(seed).
 * The caller frees it with em_generator_free(). Errors: NULL on allocation failure.
 */
EM_API em_generator *em_generator_new(uint64_t seed);

/**
 * Free a generator. NULL is ignored.
 * Misuse (best effort, common.h): freeing it twice, or passing it anywhere after, records EM_EMISUSE
 * and does nothing.
 */
EM_API void em_generator_free(em_generator *g);
/**
 * Copy the state of `g` (torch: g.get_state(), bytes) into out[0..cap-1] and its size into *size (call
 * with cap 0 to size the buffer). Save your own generators' states in a checkpoint with it (a
 * callback's state_save, trainer.h); em_trainer_save_checkpoint keeps the global generator's itself.
 * Errors: EM_EINVAL for NULL g or size (or out with cap > 0); EM_EMISUSE for a freed generator.
 */
EM_API em_status em_generator_get_state(em_generator *g, uint8_t *out, size_t cap, size_t *size);
/**
 * Set the state of `g` from `size` bytes em_generator_get_state wrote (torch: g.set_state(t)).
 * Errors: EM_ETORCH with torch's message for bytes it refuses (a state of another size: nothing changes then);
 * EM_EINVAL for NULL.
 */
EM_API em_status em_generator_set_state(em_generator *g, const uint8_t *state, size_t size);

/* ---- creating tensors ------------------------------------------------------------------------- */

/**
 * A tensor holding a copy of `data` (row-major, `dtype` elements, product(shape) of them).
 * `opts->dtype` is ignored (the data's dtype is `dtype`); device and requires_grad apply.
 * torch: torch.tensor(data).reshape(shape)
 * Owned by the open scope; with no scope open, the caller frees it with em_tensor_free().
 * Errors: NULL for a negative dimension, ndim outside 0..EM_MAX_DIMS, or data == NULL with numel > 0.
 */
EM_API em_tensor *em_tensor_from(const void *data, em_dtype dtype, const int64_t *shape, int ndim,
                                 const em_tensor_opts *opts);

/** A float32 tensor from `n` floats with the given shape; em_tensor_from() for the common case. */
EM_API em_tensor *em_tensor_from_f32(const float *data, const int64_t *shape, int ndim);

/** A 0-dim tensor holding `value`. torch: torch.tensor(value, dtype=...). Ownership as em_tensor_from. */
EM_API em_tensor *em_scalar_tensor(double value, const em_tensor_opts *opts);

/** torch.zeros(shape). Ownership and errors as em_tensor_from. */
EM_API em_tensor *em_zeros(const int64_t *shape, int ndim, const em_tensor_opts *opts);
/** torch.ones(shape). Ownership and errors as em_tensor_from. */
EM_API em_tensor *em_ones(const int64_t *shape, int ndim, const em_tensor_opts *opts);
/** torch.full(shape, value). Ownership and errors as em_tensor_from. */
EM_API em_tensor *em_full(const int64_t *shape, int ndim, double value, const em_tensor_opts *opts);
/** torch.zeros_like(t) (same dtype and device). Ownership as em_tensor_from. */
EM_API em_tensor *em_zeros_like(const em_tensor *t);
/** torch.ones_like(t). Ownership as em_tensor_from. */
EM_API em_tensor *em_ones_like(const em_tensor *t);
/**
 * torch.arange(start, end, step): values start, start+step, ... below end.
 * The default dtype is float32 (opts->dtype); pass EM_I64 for indices.
 * Errors: NULL when step is 0 or has the wrong sign.
 */
EM_API em_tensor *em_arange(double start, double end, double step, const em_tensor_opts *opts);
/** torch.linspace(start, end, steps). Errors: NULL when steps < 0. */
EM_API em_tensor *em_linspace(double start, double end, int64_t steps, const em_tensor_opts *opts);
/** torch.randn(shape): standard normal, from opts->generator or the global one. */
EM_API em_tensor *em_randn(const int64_t *shape, int ndim, const em_tensor_opts *opts);
/** torch.rand(shape): uniform on [0, 1). */
EM_API em_tensor *em_rand(const int64_t *shape, int ndim, const em_tensor_opts *opts);
/**
 * torch.randint(low, high, shape): integers in [low, high), always int64 (opts->dtype is
 * ignored; convert with em_to_dtype()). Errors: NULL when high <= low.
 */
EM_API em_tensor *em_randint(int64_t low, int64_t high, const int64_t *shape, int ndim,
                             const em_tensor_opts *opts);
/** torch.randperm(n) (int64). */
EM_API em_tensor *em_randperm(int64_t n, const em_tensor_opts *opts);

/* ---- inspecting tensors ----------------------------------------------------------------------- */

/** Number of dimensions, or -1 for NULL. */
EM_API int em_tensor_dim(const em_tensor *t);
/**
 * Size of dimension `dim` (negative counts from the end).
 * Errors: -1 for a NULL tensor or a dimension out of range (recorded).
 */
EM_API int64_t em_tensor_size(const em_tensor *t, int dim);
/**
 * Copies up to `max` sizes into `shape` and returns the number of dimensions (which may be more
 * than `max`). Returns -1 for NULL.
 */
EM_API int em_tensor_shape(const em_tensor *t, int64_t *shape, int max);
/** Number of elements; -1 for NULL. */
EM_API int64_t em_tensor_numel(const em_tensor *t);
/** Element type; EM_F32 for NULL. */
EM_API em_dtype em_tensor_dtype(const em_tensor *t);
/** Device; the CPU for NULL. */
EM_API em_device em_tensor_device(const em_tensor *t);
/** Size in bytes of one element of `dtype`. */
EM_API size_t em_dtype_size(em_dtype dtype);
/** "float32", "float64", "float16", "bfloat16", "int64", "int32", "uint8", "bool". */
EM_API const char *em_dtype_name(em_dtype dtype);

/**
 * The value of a one-element tensor as a double. torch: t.item()
 * Errors: NaN (recorded) for NULL or when numel != 1.
 */
EM_API double em_tensor_item(const em_tensor *t);

/**
 * Copy the elements (row-major, converted to `dtype`) into `out`, which holds `capacity` bytes.
 * Works for any device and layout. torch: t.to("cpu", dtype).contiguous() then a memcpy.
 * Errors: EM_EINVAL when capacity < numel * em_dtype_size(dtype); nothing is written then.
 */
EM_API em_status em_tensor_copy_to(const em_tensor *t, void *out, size_t capacity, em_dtype dtype);

/**
 * Write a one-line summary into `buf` (snprintf-style: always NUL-terminated when len > 0) and
 * return the length it needed, e.g. "tensor(float32[8, 2], cpu, requires_grad)".
 */
EM_API size_t em_tensor_describe(const em_tensor *t, char *buf, size_t len);

/** Print the tensor's values with torch's formatting to `f`. Errors: EM_EINVAL for NULL. */
EM_API em_status em_tensor_print(const em_tensor *t, FILE *f);

/* ---- conversion ------------------------------------------------------------------------------- */

/** torch: t.to(device). Returns a new handle (the same data when already there). */
EM_API em_tensor *em_to_device(const em_tensor *t, em_device device);
/** torch: t.to(dtype). */
EM_API em_tensor *em_to_dtype(const em_tensor *t, em_dtype dtype);
/** torch: t.clone() (a copy that stays in the autograd graph). */
EM_API em_tensor *em_clone(const em_tensor *t);
/** torch: t.contiguous(). */
EM_API em_tensor *em_contiguous(const em_tensor *t);

/**
 * Number of threads libtorch uses for intra-op parallelism on the CPU. torch: torch.set_num_threads(n)
 * Small models train fastest on one thread (threads spin-waiting on tiny matrices cost more than they
 * save). OpenBLAS has its own pool: set OPENBLAS_NUM_THREADS in the environment before the program
 * starts. Errors: EM_EINVAL for n < 1.
 */
EM_API em_status em_set_num_threads(int n);
/** torch.get_num_threads() */
EM_API int em_get_num_threads(void);

/** Whether CUDA is usable in this build on this machine. */
EM_API bool em_cuda_is_available(void);
/** Number of CUDA devices (0 without CUDA). */
EM_API int64_t em_cuda_device_count(void);

/* ---- autograd --------------------------------------------------------------------------------- */

/** torch: t.requires_grad_(flag). Errors: EM_ETORCH for a non-float tensor asked to require grad. */
EM_API em_status em_tensor_set_requires_grad(em_tensor *t, bool flag);
/** torch: t.requires_grad. false for NULL. */
EM_API bool em_tensor_requires_grad(const em_tensor *t);
/**
 * The gradient accumulated in t.grad, or NULL (nothing recorded) when it is None.
 * The handle shares t.grad's data. Owned by the open scope; with no scope open, the caller frees it.
 */
EM_API em_tensor *em_tensor_grad(const em_tensor *t);
/**
 * Set t.grad (a copy of the handle; NULL clears it to None). torch: t.grad = g.
 * Errors: EM_EINVAL, as torch 1.13's setter, for a gradient of another dtype or device type
 * ("assigned grad has data of a different type"), on another CUDA device ("... located on a different
 * device"), of another shape ("assigned grad has data of a different size"), or `t` itself.
 */
EM_API em_status em_tensor_set_grad(em_tensor *t, const em_tensor *grad);
/** torch: t.detach(). */
EM_API em_tensor *em_detach(const em_tensor *t);

/**
 * Back-propagate from a scalar. torch: t.backward()
 * Errors: EM_ETORCH when t is not a scalar or does not require grad (torch's message).
 */
EM_API em_status em_backward(const em_tensor *t);
/**
 * torch: t.backward(gradient=grad, retain_graph=retain_graph). `grad` may be NULL for a scalar.
 */
EM_API em_status em_backward_ex(const em_tensor *t, const em_tensor *grad, bool retain_graph);

/**
 * Disable gradient recording on this thread until the matching em_no_grad_end() (torch.no_grad()).
 * Nests. Never fails.
 */
EM_API void em_no_grad_begin(void);
/** Close the innermost em_no_grad_begin(). Errors: EM_ESTATE when none is open. */
EM_API em_status em_no_grad_end(void);
/** torch.is_grad_enabled(). */
EM_API bool em_is_grad_enabled(void);

/* ---- elementwise arithmetic ------------------------------------------------------------------- *
 * All return a new tensor owned by the open scope (the caller frees it with em_tensor_free() when
 * no scope is open), broadcast as torch does, and fail with a message naming both shapes.
 * A double `s` acts as Python's number would: on an integer tensor an integral `s` is a Python int
 * (the result stays integer), otherwise a Python float (the result is floating point). */

EM_API em_tensor *em_add(const em_tensor *a, const em_tensor *b);      /* a + b */
EM_API em_tensor *em_sub(const em_tensor *a, const em_tensor *b);      /* a - b */
EM_API em_tensor *em_mul(const em_tensor *a, const em_tensor *b);      /* a * b */
EM_API em_tensor *em_div(const em_tensor *a, const em_tensor *b);      /* a / b */
EM_API em_tensor *em_pow(const em_tensor *a, const em_tensor *b);      /* a ** b */
EM_API em_tensor *em_maximum(const em_tensor *a, const em_tensor *b);  /* torch.maximum */
EM_API em_tensor *em_minimum(const em_tensor *a, const em_tensor *b);  /* torch.minimum */
EM_API em_tensor *em_add_scalar(const em_tensor *a, double s);         /* a + s */
EM_API em_tensor *em_sub_scalar(const em_tensor *a, double s);         /* a - s */
EM_API em_tensor *em_rsub_scalar(const em_tensor *a, double s);        /* s - a */
EM_API em_tensor *em_mul_scalar(const em_tensor *a, double s);         /* a * s */
EM_API em_tensor *em_div_scalar(const em_tensor *a, double s);         /* a / s */
EM_API em_tensor *em_pow_scalar(const em_tensor *a, double s);         /* a ** s */
EM_API em_tensor *em_neg(const em_tensor *a);                          /* -a */
EM_API em_tensor *em_exp(const em_tensor *a);                          /* torch.exp */
EM_API em_tensor *em_ln(const em_tensor *a); /* torch.log (natural logarithm); em_log() is self.log */
EM_API em_tensor *em_sqrt(const em_tensor *a);                         /* torch.sqrt */
EM_API em_tensor *em_abs(const em_tensor *a);                          /* torch.abs */
EM_API em_tensor *em_square(const em_tensor *a);                       /* torch.square */
EM_API em_tensor *em_sin(const em_tensor *a);                          /* torch.sin */
EM_API em_tensor *em_cos(const em_tensor *a);                          /* torch.cos */
/** torch.clamp(a, min=lo, max=hi); pass -INFINITY / INFINITY for a missing bound. */
EM_API em_tensor *em_clamp(const em_tensor *a, double lo, double hi);

/* ---- in-place updates (for optimizers and initialisation written in C) -------------------------
 * They modify `dst` and return EM_OK; torch raises (EM_ETORCH) when dst is a leaf that requires
 * grad and grad mode is on: wrap them in em_no_grad_begin()/em_no_grad_end(). */

EM_API em_status em_copy_(em_tensor *dst, const em_tensor *src);                 /* dst.copy_(src) */
EM_API em_status em_zero_(em_tensor *dst);                                       /* dst.zero_() */
EM_API em_status em_fill_(em_tensor *dst, double value);                         /* dst.fill_(v) */
EM_API em_status em_add_(em_tensor *dst, const em_tensor *src, double alpha);    /* dst.add_(src, alpha=) */
EM_API em_status em_mul_scalar_(em_tensor *dst, double s);                       /* dst.mul_(s) */
EM_API em_status em_uniform_(em_tensor *dst, double lo, double hi, em_generator *g); /* dst.uniform_ */
EM_API em_status em_normal_(em_tensor *dst, double mean, double std, em_generator *g); /* dst.normal_ */

/* ---- linear algebra and reductions ------------------------------------------------------------ */

/**
 * Matrix product with torch's broadcasting rules. torch: torch.matmul(a, b)
 * Errors: NULL, with a message naming both shapes, when the inner dimensions differ.
 */
EM_API em_tensor *em_matmul(const em_tensor *a, const em_tensor *b);
/** torch.sum(a) over all elements. */
EM_API em_tensor *em_sum(const em_tensor *a);
/** torch.sum(a, dim, keepdim). */
EM_API em_tensor *em_sum_dim(const em_tensor *a, int dim, bool keepdim);
/** torch.mean(a). */
EM_API em_tensor *em_mean(const em_tensor *a);
/** torch.mean(a, dim, keepdim). */
EM_API em_tensor *em_mean_dim(const em_tensor *a, int dim, bool keepdim);
/** torch.max(a) over all elements. */
EM_API em_tensor *em_max(const em_tensor *a);
/** torch.min(a). */
EM_API em_tensor *em_min(const em_tensor *a);
/**
 * torch.max(a, dim, keepdim): the values; when `indices` is not NULL it receives the argmax
 * (int64, owned like the result).
 */
EM_API em_tensor *em_max_dim(const em_tensor *a, int dim, bool keepdim, em_tensor **indices);
/** torch.min(a, dim, keepdim), as em_max_dim. */
EM_API em_tensor *em_min_dim(const em_tensor *a, int dim, bool keepdim, em_tensor **indices);
/** torch.argmax(a, dim, keepdim) (int64). */
EM_API em_tensor *em_argmax(const em_tensor *a, int dim, bool keepdim);
/** torch.linalg.vector_norm(a, ord) over all elements (ord = 2.0 for the 2-norm, INFINITY for max |a|). */
EM_API em_tensor *em_norm(const em_tensor *a, double ord);

/* ---- shape ------------------------------------------------------------------------------------ */

/** torch: a.reshape(shape); one dimension may be -1. */
EM_API em_tensor *em_reshape(const em_tensor *a, const int64_t *shape, int ndim);
/** torch: a.view(shape) (shares data; fails when the layout does not allow it). */
EM_API em_tensor *em_view(const em_tensor *a, const int64_t *shape, int ndim);
/** torch.flatten(a, start_dim, end_dim). */
EM_API em_tensor *em_flatten(const em_tensor *a, int start_dim, int end_dim);
/** torch.transpose(a, d0, d1). */
EM_API em_tensor *em_transpose(const em_tensor *a, int d0, int d1);
/** a.permute(dims). */
EM_API em_tensor *em_permute(const em_tensor *a, const int64_t *dims, int ndim);
/** a.unsqueeze(dim). */
EM_API em_tensor *em_unsqueeze(const em_tensor *a, int dim);
/** a.squeeze(dim). */
EM_API em_tensor *em_squeeze(const em_tensor *a, int dim);
/** torch.cat(ts[0..n-1], dim). Errors: NULL when n == 0 or any element is NULL. */
EM_API em_tensor *em_cat(em_tensor *const *ts, size_t n, int dim);
/** torch.stack(ts[0..n-1], dim). Errors as em_cat. */
EM_API em_tensor *em_stack(em_tensor *const *ts, size_t n, int dim);
/** a.narrow(dim, start, length): a view. */
EM_API em_tensor *em_narrow(const em_tensor *a, int dim, int64_t start, int64_t length);
/** a[..., start:end:step, ...] along `dim` (Python slicing rules for negative start/end): a view. */
EM_API em_tensor *em_slice(const em_tensor *a, int dim, int64_t start, int64_t end, int64_t step);
/** a.select(dim, index): removes the dimension. */
EM_API em_tensor *em_select(const em_tensor *a, int dim, int64_t index);
/** torch.index_select(a, dim, index) with an int64 index vector. */
EM_API em_tensor *em_index_select(const em_tensor *a, int dim, const em_tensor *index);

/* ---- comparisons and selection (results are bool tensors) ------------------------------------- */

EM_API em_tensor *em_eq(const em_tensor *a, const em_tensor *b);      /* a == b */
EM_API em_tensor *em_ne(const em_tensor *a, const em_tensor *b);      /* a != b */
EM_API em_tensor *em_lt(const em_tensor *a, const em_tensor *b);      /* a < b */
EM_API em_tensor *em_le(const em_tensor *a, const em_tensor *b);      /* a <= b */
EM_API em_tensor *em_gt(const em_tensor *a, const em_tensor *b);      /* a > b */
EM_API em_tensor *em_ge(const em_tensor *a, const em_tensor *b);      /* a >= b */
EM_API em_tensor *em_eq_scalar(const em_tensor *a, double s);         /* a == s */
EM_API em_tensor *em_lt_scalar(const em_tensor *a, double s);         /* a < s */
EM_API em_tensor *em_gt_scalar(const em_tensor *a, double s);         /* a > s */
/** torch.where(cond, a, b). */
EM_API em_tensor *em_where(const em_tensor *cond, const em_tensor *a, const em_tensor *b);

/* ---- activations ------------------------------------------------------------------------------ */

EM_API em_tensor *em_relu(const em_tensor *a);                         /* F.relu */
EM_API em_tensor *em_leaky_relu(const em_tensor *a, double negative_slope); /* torch default 0.01 */
EM_API em_tensor *em_tanh(const em_tensor *a);                         /* torch.tanh */
EM_API em_tensor *em_sigmoid(const em_tensor *a);                      /* torch.sigmoid */
EM_API em_tensor *em_gelu(const em_tensor *a);                 /* exact (erf) form */
EM_API em_tensor *em_softmax(const em_tensor *a, int dim);             /* F.softmax(a, dim) */
EM_API em_tensor *em_log_softmax(const em_tensor *a, int dim);         /* F.log_softmax(a, dim) */

/* ---- losses ------------------------------------------------------------------------------------
 * torch.nn.functional.<name>(input, target, reduction=...). They fail, with torch's message, when
 * the shapes or dtypes do not fit. */

/** F.mse_loss: mean squared error. */
EM_API em_tensor *em_mse_loss(const em_tensor *input, const em_tensor *target, em_reduction r);
/** F.l1_loss: mean absolute error. */
EM_API em_tensor *em_l1_loss(const em_tensor *input, const em_tensor *target, em_reduction r);
/** F.smooth_l1_loss with `beta` (torch's default 1.0). Errors: NULL when beta < 0. */
EM_API em_tensor *em_smooth_l1_loss(const em_tensor *input, const em_tensor *target, em_reduction r,
                                    double beta);
/** F.cross_entropy with int64 class targets [N] (ignore_index -100, no weights, no smoothing). */
EM_API em_tensor *em_cross_entropy(const em_tensor *input, const em_tensor *target, em_reduction r);
/** F.nll_loss with int64 class targets (ignore_index -100, no weights). */
EM_API em_tensor *em_nll_loss(const em_tensor *input, const em_tensor *target, em_reduction r);
/** F.binary_cross_entropy on probabilities; `weight` may be NULL. */
EM_API em_tensor *em_bce_loss(const em_tensor *input, const em_tensor *target,
                              const em_tensor *weight, em_reduction r);
/** F.binary_cross_entropy_with_logits; `weight` and `pos_weight` may be NULL. */
EM_API em_tensor *em_bce_with_logits(const em_tensor *input, const em_tensor *target,
                                     const em_tensor *weight, const em_tensor *pos_weight,
                                     em_reduction r);

/* ---- functional layers (the em_nn layers call these) ------------------------------------------ */

/** F.linear(x, weight, bias): x W^T + b; `bias` may be NULL. */
EM_API em_tensor *em_linear(const em_tensor *x, const em_tensor *weight, const em_tensor *bias);
/** F.dropout(x, p, training) with the global generator. Errors: NULL when p is outside [0, 1]. */
EM_API em_tensor *em_dropout(const em_tensor *x, double p, bool training);

EM_END_DECLS

#endif /* EMBER_TENSOR_H */
