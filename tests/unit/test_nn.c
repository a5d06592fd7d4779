/* test_nn.c: layers (ember/nn.h): torch's initialisation for a seed, forward and backward, names of
 * parameters inside containers, layers written in C, normalisation and dropout modes, moving
 * layers between dtypes, and the ownership rules (run it under ASan: a leak fails it).
 *
 * Reference numbers marked "torch 1.13.1" were recorded with Python's torch 1.13.1 on the CPU. */
#include "helpers.h"

#include <stdlib.h>

/* Copy a float tensor out and compare it element by element with `want` (relative tolerance). */
static void assert_values(const em_tensor *t, const float *want, size_t n, double rtol)
{
    float got[64];
    assert_true(n <= 64);
    helper_values(t, got, n);
    for (size_t i = 0; i < n; i++)
        assert_close(got[i], want[i], rtol, 1e-7);
}

/* ---- initialisation: the seed gives torch's weights ----------------------------------------------- */

static void test_nn__linear_init_matches_torch_seed(void **state)
{
    (void)state;
    /* torch 1.13.1: torch.manual_seed(0); torch.nn.Linear(4, 3) */
    static const float w[12] = {-0.0037434, 0.2682218, -0.4115226, -0.3679695, -0.1925772, 0.1340787,
                                -0.0099066, 0.3964447, -0.044372,  0.1323063,  -0.1511065, -0.0982827};
    static const float b[3] = {-0.4776742, -0.3311411, -0.2061116};
    em_manual_seed(0);
    em_nn *lin = em_nn_linear(4, 3, true);
    assert_nonnull_em(lin);
    assert_string_equal(em_nn_kind(lin), "Linear");
    assert_int_equal(em_nn_num_parameters(lin), 2);
    assert_string_equal(em_nn_parameter_name(lin, 0), "weight");
    assert_string_equal(em_nn_parameter_name(lin, 1), "bias");
    int64_t shape[2];
    assert_int_equal(em_tensor_shape(em_nn_parameter(lin, 0), shape, 2), 2);
    assert_int_equal(shape[0], 3);
    assert_int_equal(shape[1], 4);
    assert_true(em_tensor_requires_grad(em_nn_parameter(lin, 0)));
    assert_values(em_nn_get(lin, "weight"), w, 12, 2e-6);
    assert_values(em_nn_get(lin, "bias"), b, 3, 2e-6);
    assert_int_equal(em_nn_num_buffers(lin), 0);
    em_nn_free(lin);

    /* without a bias, there is one parameter (torch: bias is None and not listed) */
    em_nn *nb = em_nn_linear(4, 3, false);
    assert_int_equal(em_nn_num_parameters(nb), 1);
    assert_string_equal(em_nn_parameter_name(nb, 0), "weight");
    em_nn_free(nb);
}

static void test_nn__conv_init_and_output_shape(void **state)
{
    (void)state;
    /* torch 1.13.1: torch.manual_seed(0); c = torch.nn.Conv2d(1, 2, 3, stride=2)
     * c.weight.flatten()[:6], c.bias; c(torch.zeros(1, 1, 28, 28)).shape == [1, 2, 13, 13]
     * ((28 - 3) / 2 + 1 = 13) */
    static const float w[6] = {-0.0024956069, 0.17881453, -0.27434838, -0.24531302, -0.12838480, 0.089385793};
    static const float b[2] = {-0.22598037, -0.14515428};
    em_manual_seed(0);
    em_nn *c = em_nn_conv2d(1, 2, 3, &(em_conv_opts){.stride = 2});
    assert_nonnull_em(c);
    assert_string_equal(em_nn_kind(c), "Conv2d");
    float got[18];
    helper_values(em_nn_get(c, "weight"), got, 18);
    for (int i = 0; i < 6; i++)
        assert_close(got[i], w[i], 2e-6, 1e-7);
    assert_values(em_nn_get(c, "bias"), b, 2, 2e-6);

    em_scope_begin();
    em_tensor *y = em_nn_forward(c, em_zeros(EM_SHAPE(1, 1, 28, 28), NULL));
    assert_nonnull_em(y);
    int64_t shape[4];
    assert_int_equal(em_tensor_shape(y, shape, 4), 4);
    assert_int_equal(shape[0], 1);
    assert_int_equal(shape[1], 2);
    assert_int_equal(shape[2], 13);
    assert_int_equal(shape[3], 13);
    assert_ok(em_scope_end());
    em_nn_free(c);

    /* torch 1.13.1: torch.manual_seed(0); t = torch.nn.ConvTranspose2d(2, 3, 3, stride=2): weight
     * [2, 3, 3, 3] (fan_in = 3 * 9 = 27), t.weight.flatten()[:3], t.bias; on [1, 2, 5, 5] the output
     * is [1, 3, 11, 11] ((5 - 1) * 2 + 3 = 11) */
    static const float tw[3] = {-0.0014408393, 0.10323862, -0.15839511};
    static const float tb[3] = {0.12903516, -0.11331506, 0.035861924};
    em_manual_seed(0);
    em_nn *t = em_nn_conv_transpose2d(2, 3, 3, &(em_conv_opts){.stride = 2});
    assert_nonnull_em(t);
    float tgot[54];
    helper_values(em_nn_get(t, "weight"), tgot, 54);
    for (int i = 0; i < 3; i++)
        assert_close(tgot[i], tw[i], 2e-6, 1e-7);
    assert_values(em_nn_get(t, "bias"), tb, 3, 2e-6);
    em_scope_begin();
    y = em_nn_forward(t, em_zeros(EM_SHAPE(1, 2, 5, 5), NULL));
    assert_int_equal(em_tensor_shape(y, shape, 4), 4);
    assert_int_equal(shape[1], 3);
    assert_int_equal(shape[2], 11);
    assert_int_equal(shape[3], 11);
    assert_ok(em_scope_end());
    em_nn_free(t);

    /* bad options */
    assert_null(em_nn_conv2d(3, 4, 3, &(em_conv_opts){.groups = 2}));
    assert_error_contains("divisible by groups");
    em_clear_error();
    assert_null(em_nn_conv2d(1, 2, 0, NULL));
    assert_error_contains("kernel_size");
}

/* ---- Linear: forward and backward worked out by hand ---------------------------------------------- */

static void test_nn__linear_forward_backward_by_hand(void **state)
{
    (void)state;
    /* W = [[1, 0], [2, -1], [0.5, 1]] ([out 3, in 2]), b = [0.1, -0.2, 0.3], x = [[1, 2], [3, -1]]
     * y = x W^T + b:
     *   row 0: [1, 2*1 - 2, 0.5 + 2] + b = [1, 0, 2.5] + b = [1.1, -0.2, 2.8]
     *   row 1: [3, 6 + 1, 1.5 - 1] + b   = [3, 7, 0.5] + b = [3.1, 6.8, 0.8]
     * L = sum(y * g) with g = [[1, 2, 3], [-1, 0, 1]]:
     *   1.1 - 0.4 + 8.4 - 3.1 + 0 + 0.8 = 6.8
     * dL/dy = g, so
     *   dL/dW = g^T x: row i = sum_n g[n][i] x[n]
     *     i=0: 1*[1, 2] - 1*[3, -1] = [-2, 3]; i=1: 2*[1, 2] = [2, 4]; i=2: 3*[1, 2] + [3, -1] = [6, 5]
     *   dL/db = sum_n g[n] = [0, 2, 4]
     *   dL/dx = g W: row 0: 1*[1, 0] + 2*[2, -1] + 3*[0.5, 1] = [6.5, 1]; row 1: -[1, 0] + [0.5, 1] = [-0.5, 1] */
    static const float W[6] = {1, 0, 2, -1, 0.5f, 1};
    static const double b[3] = {0.1, -0.2, 0.3}; /* f64 source: converted to the parameter's f32 */
    em_nn *lin = em_nn_linear(2, 3, true);
    assert_ok(em_nn_set(lin, "weight", W, EM_F32, 6));
    assert_ok(em_nn_set(lin, "bias", b, EM_F64, 3));
    /* em_nn_set records no autograd history: the parameters stay leaves */
    assert_null(em_tensor_grad(em_nn_get(lin, "weight")));

    em_scope_begin();
    em_tensor *x = T(EM_SHAPE(2, 2), 1, 2, 3, -1);
    assert_ok(em_tensor_set_requires_grad(x, true));
    em_tensor *y = em_nn_forward(lin, x);
    static const float y_want[6] = {1.1f, -0.2f, 2.8f, 3.1f, 6.8f, 0.8f};
    assert_values(y, y_want, 6, 1e-6);
    em_tensor *loss = em_sum(em_mul(y, T(EM_SHAPE(2, 3), 1, 2, 3, -1, 0, 1)));
    assert_close_rel(em_tensor_item(loss), 6.8, 1e-6);
    assert_ok(em_backward(loss));
    static const float dW[6] = {-2, 3, 2, 4, 6, 5};
    static const float db[3] = {0, 2, 4};
    static const float dx[4] = {6.5f, 1, -0.5f, 1};
    assert_values(em_tensor_grad(em_nn_get(lin, "weight")), dW, 6, 1e-6);
    assert_values(em_tensor_grad(em_nn_get(lin, "bias")), db, 3, 1e-6);
    assert_values(em_tensor_grad(x), dx, 4, 1e-6);

    /* zero_grad(false) keeps zeroed gradients; zero_grad(true) drops them */
    assert_ok(em_nn_zero_grad(lin, false));
    static const float zeros[6] = {0};
    assert_values(em_tensor_grad(em_nn_get(lin, "weight")), zeros, 6, 0);
    assert_ok(em_nn_zero_grad(lin, true));
    assert_null(em_tensor_grad(em_nn_get(lin, "weight")));
    assert_null(em_tensor_grad(em_nn_get(lin, "bias")));
    assert_ok(em_scope_end());
    em_nn_free(lin);
}

static void test_nn__forward_error_names_the_layer(void **state)
{
    (void)state;
    em_nn *lin = em_nn_linear(4, 3, true);
    em_scope_begin();
    assert_null(em_nn_forward(lin, em_zeros(EM_SHAPE(8, 3), NULL)));
    assert_int_equal(em_last_status(), EM_ETORCH);
    assert_error_contains("em_nn_forward: Linear: mat1 and mat2 shapes cannot be multiplied (8x3 and 4x3)");
    assert_null(strstr(em_last_error(), "\n")); /* one line, no C++ backtrace */
    /* a NULL input (a batch without that tensor) is reported naming the argument */
    em_clear_error();
    assert_null(em_nn_forward(lin, NULL));
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_error_contains("em_nn_forward: argument 2 is NULL");
    em_clear_error();
    assert_ok(em_scope_end());
    em_nn_free(lin);
}

/* ---- containers ---------------------------------------------------------------------------------- */

static void test_nn__sequential_names_and_forward(void **state)
{
    (void)state;
    em_manual_seed(0);
    em_nn *net = EM_NN_SEQUENTIAL(em_nn_linear(4, 8, true), em_nn_tanh(), em_nn_linear(8, 1, true));
    assert_nonnull_em(net);
    assert_string_equal(em_nn_kind(net), "Sequential");
    assert_int_equal(em_nn_num_parameters(net), 4);
    static const char *names[4] = {"0.weight", "0.bias", "2.weight", "2.bias"};
    for (size_t i = 0; i < 4; i++)
        assert_string_equal(em_nn_parameter_name(net, i), names[i]);
    assert_ptr_equal(em_nn_get(net, "2.bias"), em_nn_parameter(net, 3));
    assert_string_equal(em_nn_kind(em_nn_child(net, "1")), "Tanh");
    assert_null(em_nn_child(net, "3"));

    /* torch 1.13.1: torch.manual_seed(0); net = Sequential(Linear(4, 8), Tanh(), Linear(8, 1));
     * net(torch.arange(8.).reshape(2, 4) / 8) */
    static const float want[2] = {0.098838449, 0.093030334};
    em_scope_begin();
    em_tensor *x = em_div_scalar(em_reshape(em_arange(0, 8, 1, NULL), EM_SHAPE(2, 4)), 8.0);
    assert_values(em_nn_forward(net, x), want, 2, 1e-5);

    /* the parameter list an optimizer gets, in the same order */
    em_params *p = em_nn_parameters(net);
    assert_int_equal(em_params_size(p), 4);
    assert_ok(em_params_add_nn(p, em_nn_child(net, "2")));
    assert_int_equal(em_params_size(p), 6);
    assert_int_equal(em_tensor_numel(em_params_get(p, 4)), 8); /* 2.weight again: [1, 8] */
    em_params_free(p);

    /* appending: the name must be the next position */
    assert_int_equal(em_nn_add(net, "7", em_nn_relu()), EM_EINVAL);
    assert_error_contains("\"3\"");
    em_clear_error();
    assert_ok(em_nn_add(net, "3", em_nn_sigmoid()));
    float out[2];
    helper_values(em_nn_forward(net, x), out, 2);
    assert_close_rel(out[0], 1.0 / (1.0 + exp(-want[0])), 1e-5);
    assert_ok(em_scope_end());
    em_nn_free(net);

    /* an empty Sequential is the identity, as in torch */
    em_nn *empty = em_nn_sequential(NULL, 0);
    assert_nonnull_em(empty);
    em_scope_begin();
    assert_close_rel(em_tensor_item(em_nn_forward(empty, em_full(EM_SHAPE(1), 3.0, NULL))), 3.0, 0);
    assert_ok(em_scope_end());
    em_nn_free(empty);
}

static void test_nn__container_of_sub_nets(void **state)
{
    (void)state;
    em_nn *G = EM_NN_SEQUENTIAL(em_nn_linear(2, 3, true), em_nn_relu());
    em_nn *D = EM_NN_SEQUENTIAL(em_nn_linear(3, 1, true), em_nn_sigmoid());
    /* a handle taken before G joins the container stays valid afterwards */
    em_tensor *gw = em_nn_get(G, "0.weight");
    assert_nonnull_em(gw);
    em_nn *gan = em_nn_container();
    assert_string_equal(em_nn_kind(gan), "Container");
    assert_ok(em_nn_add(gan, "G", G));
    assert_ok(em_nn_add(gan, "D", D));
    assert_int_equal(em_nn_num_parameters(gan), 4);
    assert_string_equal(em_nn_parameter_name(gan, 0), "G.0.weight");
    assert_string_equal(em_nn_parameter_name(gan, 1), "G.0.bias");
    assert_string_equal(em_nn_parameter_name(gan, 2), "D.0.weight");
    assert_string_equal(em_nn_parameter_name(gan, 3), "D.0.bias");
    assert_ptr_equal(em_nn_child(gan, "G"), G);
    assert_string_equal(em_nn_kind(em_nn_child(gan, "D.1")), "Sigmoid");
    assert_int_equal(em_tensor_numel(gw), 6);
    assert_ptr_equal(em_nn_get(G, "0.weight"), gw);
    assert_int_equal(em_tensor_numel(em_nn_get(gan, "D.0.weight")), 3);

    /* a container has no forward */
    em_scope_begin();
    assert_null(em_nn_forward(gan, em_zeros(EM_SHAPE(1, 2), NULL)));
    assert_error_contains("em_nn_forward: a container has no forward; call its children");
    em_clear_error();
    em_tensor *z = em_nn_forward(D, em_nn_forward(G, em_zeros(EM_SHAPE(1, 2), NULL)));
    assert_int_equal(em_tensor_numel(z), 1);
    assert_ok(em_scope_end());

    /* train/eval reaches every child */
    assert_true(em_nn_is_training(em_nn_child(gan, "D.0")));
    assert_ok(em_nn_train(gan, false));
    assert_false(em_nn_is_training(gan));
    assert_false(em_nn_is_training(em_nn_child(gan, "D.0")));

    /* bad names; the rejected child is freed (ASan: no leak) */
    assert_int_equal(em_nn_add(gan, "G", em_nn_relu()), EM_EINVAL);
    assert_error_contains("already has");
    em_clear_error();
    assert_int_equal(em_nn_add(gan, "a.b", em_nn_relu()), EM_EINVAL);
    assert_error_contains("'.'");
    em_clear_error();
    assert_int_equal(em_nn_add(gan, "", em_nn_relu()), EM_EINVAL);
    assert_error_contains("empty");
    em_clear_error();
    /* a child that already has a parent, or a cycle, is refused and left where it is */
    em_nn *other = em_nn_container();
    assert_int_equal(em_nn_add(other, "G", G), EM_EINVAL);
    assert_error_contains("already belongs");
    em_clear_error();
    assert_int_equal(em_nn_add(G, "x", gan), EM_EINVAL);
    em_clear_error();
    /* built-in layers hold no sub-layers */
    assert_int_equal(em_nn_add(em_nn_child(G, "0"), "x", em_nn_relu()), EM_EINVAL);
    assert_error_contains("cannot hold sub-layers");
    em_clear_error();
    em_nn_free(other);
    em_nn_free(gan);
}

/* ---- a layer written in C: y = x * scale ------------------------------------------------------------ */

typedef struct scale_state {
    int forwards;
    int *destroyed; /* set to 1 by destroy */
} scale_state;

static em_tensor *scale_forward(em_nn *self, const em_tensor *x)
{
    scale_state *s = em_nn_state(self);
    s->forwards++;
    return em_mul(x, em_nn_get(self, "scale"));
}

static void scale_destroy(void *state)
{
    scale_state *s = state;
    *s->destroyed += 1;
    free(s);
}

static const em_nn_ops scale_ops = {.version = EM_NN_OPS_VERSION, .forward = scale_forward, .destroy = scale_destroy};

static em_nn *scale_new(int *destroyed, double init)
{
    scale_state *s = calloc(1, sizeof *s);
    s->destroyed = destroyed;
    em_nn *m = em_nn_custom(&scale_ops, s);
    em_scope_begin();
    em_tensor *p = em_nn_register_parameter(m, "scale", em_full(EM_SHAPE(1), init, NULL));
    em_scope_end();
    return p == NULL ? NULL : m;
}

static void test_nn__custom_layer_trained_one_step_by_hand(void **state)
{
    (void)state;
    int destroyed = 0;
    em_nn *m = scale_new(&destroyed, 2.0);
    assert_nonnull_em(m);
    assert_string_equal(em_nn_kind(m), "Custom");
    assert_int_equal(em_nn_num_parameters(m), 1);
    assert_string_equal(em_nn_parameter_name(m, 0), "scale");
    em_tensor *scale = em_nn_get(m, "scale");
    assert_true(em_tensor_requires_grad(scale));

    /* y = x * scale, x = [1, 2, 3], scale = 2: y = [2, 4, 6]; L = sum(y) = 12, dL/dscale = sum(x) = 6.
     * SGD step with lr 0.1: scale = 2 - 0.1 * 6 = 1.4; then y = [1.4, 2.8, 4.2]. */
    em_scope_begin();
    em_tensor *x = T(EM_SHAPE(3), 1, 2, 3);
    em_tensor *y = em_nn_forward(m, x);
    static const float y0[3] = {2, 4, 6};
    assert_values(y, y0, 3, 0);
    em_tensor *loss = em_sum(y);
    assert_ok(em_backward(loss));
    assert_close_rel(em_tensor_item(em_tensor_grad(scale)), 6.0, 0);
    em_no_grad_begin();
    assert_ok(em_add_(scale, em_tensor_grad(scale), -0.1));
    assert_ok(em_no_grad_end());
    assert_close_rel(em_tensor_item(scale), 1.4, 1e-6);
    static const float y1[3] = {1.4f, 2.8f, 4.2f};
    assert_values(em_nn_forward(m, x), y1, 3, 1e-6);
    assert_ok(em_scope_end());
    assert_int_equal(((scale_state *)em_nn_state(m))->forwards, 2);

    /* buffers, and names already used */
    em_scope_begin();
    em_tensor *buf = em_nn_register_buffer(m, "count", em_zeros(EM_SHAPE(1), &(em_tensor_opts){.dtype = EM_I64}));
    assert_nonnull_em(buf);
    assert_false(em_tensor_requires_grad(buf));
    assert_int_equal(em_nn_num_buffers(m), 1);
    assert_string_equal(em_nn_buffer_name(m, 0), "count");
    assert_null(em_nn_register_parameter(m, "scale", em_ones(EM_SHAPE(1), NULL)));
    assert_error_contains("already has");
    em_clear_error();
    assert_null(em_nn_register_buffer(m, "count", em_ones(EM_SHAPE(1), NULL)));
    em_clear_error();
    assert_null(em_nn_register_parameter(m, "a.b", em_ones(EM_SHAPE(1), NULL)));
    assert_error_contains("'.'");
    em_clear_error();
    assert_null(em_nn_register_parameter(m, "idx", em_zeros(EM_SHAPE(1), &(em_tensor_opts){.dtype = EM_I64})));
    assert_error_contains("floating point");
    em_clear_error();
    assert_ok(em_scope_end());
    assert_int_equal(destroyed, 0);
    em_nn_free(m);
    assert_int_equal(destroyed, 1);
}

static void test_nn__custom_layer_inside_sequential_and_with_children(void **state)
{
    (void)state;
    int destroyed = 0;
    /* Sequential(scale 3, ReLU): the custom layer gets an intermediate; no scope is open, so the
     * result is ours to free and the layer's temporaries must not leak (ASan). */
    em_nn *net = EM_NN_SEQUENTIAL(em_nn_relu(), scale_new(&destroyed, 3.0), em_nn_relu());
    assert_nonnull_em(net);
    assert_string_equal(em_nn_parameter_name(net, 0), "1.scale");
    em_tensor *x = em_tensor_from_f32((const float[]){-1, 2}, EM_SHAPE(2));
    em_tensor *y = em_nn_forward(net, x);
    float out[2];
    helper_values(y, out, 2);
    assert_close_rel(out[0], 0.0, 0);
    assert_close_rel(out[1], 6.0, 0);
    em_tensor_free(y);
    em_tensor_free(x);

    /* a custom layer can hold sub-layers; they come after its own parameters, as in torch */
    em_nn *outer = scale_new(&destroyed, 1.0);
    assert_ok(em_nn_add(outer, "inner", scale_new(&destroyed, 1.0)));
    assert_int_equal(em_nn_num_parameters(outer), 2);
    assert_string_equal(em_nn_parameter_name(outer, 1), "inner.scale");
    /* registering a parameter later refreshes the parent's list too */
    em_scope_begin();
    assert_nonnull_em(em_nn_register_parameter(em_nn_child(outer, "inner"), "shift", em_zeros(EM_SHAPE(1), NULL)));
    assert_ok(em_scope_end());
    assert_int_equal(em_nn_num_parameters(outer), 3);
    assert_string_equal(em_nn_parameter_name(outer, 2), "inner.shift");
    em_nn_free(outer);
    em_nn_free(net);
    assert_int_equal(destroyed, 3);

    /* a bad ops table is refused, and the state is still released */
    static const em_nn_ops no_forward = {.version = EM_NN_OPS_VERSION, .destroy = scale_destroy};
    scale_state *s = calloc(1, sizeof *s);
    s->destroyed = &destroyed;
    assert_null(em_nn_custom(&no_forward, s));
    assert_error_contains("forward");
    assert_int_equal(destroyed, 4);
    em_clear_error();
    static const em_nn_ops future = {.version = EM_NN_OPS_VERSION + 1, .forward = scale_forward};
    assert_null(em_nn_custom(&future, NULL));
    assert_error_contains("version");
}

/* A custom forward that fails: its own message is the one kept. */
static em_tensor *failing_forward(em_nn *self, const em_tensor *x)
{
    (void)self;
    return em_matmul(x, x); /* [3] @ [3] is fine; [2, 3] @ [2, 3] is not */
}

static void test_nn__custom_layer_failure_keeps_its_message(void **state)
{
    (void)state;
    static const em_nn_ops ops = {.version = EM_NN_OPS_VERSION, .forward = failing_forward};
    em_nn *m = em_nn_custom(&ops, NULL);
    em_scope_begin();
    assert_null(em_nn_forward(m, em_zeros(EM_SHAPE(2, 3), NULL)));
    assert_error_contains("em_matmul");
    assert_int_equal(em_scope_depth(), 1);
    assert_ok(em_scope_end());
    em_nn_free(m);
}

/* ---- normalisation, embedding, dropout ------------------------------------------------------------- */

static void test_nn__batchnorm_updates_running_stats_in_train_mode_only(void **state)
{
    (void)state;
    em_nn *bn = em_nn_batchnorm1d(2, NULL);
    assert_nonnull_em(bn);
    assert_int_equal(em_nn_num_parameters(bn), 2);
    assert_int_equal(em_nn_num_buffers(bn), 3);
    assert_string_equal(em_nn_buffer_name(bn, 0), "running_mean");
    assert_string_equal(em_nn_buffer_name(bn, 1), "running_var");
    assert_string_equal(em_nn_buffer_name(bn, 2), "num_batches_tracked");

    /* x = [[1, 2], [3, 6]]: batch mean [2, 4], biased var [1, 4], unbiased var [2, 8].
     * train: y = (x - mean) / sqrt(var + 1e-5) = [[-0.999995, -0.99999875], [0.999995, 0.99999875]]
     *   running_mean = 0.9 * 0 + 0.1 * [2, 4] = [0.2, 0.4]; running_var = 0.9 * 1 + 0.1 * [2, 8] = [1.1, 1.7]
     * eval: y = (x - running_mean) / sqrt(running_var + 1e-5), e.g. (1 - 0.2) / sqrt(1.10001) = 0.76276666
     * (torch 1.13.1 gives the same numbers) */
    em_scope_begin();
    em_tensor *x = T(EM_SHAPE(2, 2), 1, 2, 3, 6);
    static const float ytrain[4] = {-0.999995, -0.99999875, 0.999995, 0.99999875};
    assert_values(em_nn_forward(bn, x), ytrain, 4, 1e-6);
    static const float rm[2] = {0.2f, 0.4f}, rv[2] = {1.1f, 1.7f};
    assert_values(em_nn_get(bn, "running_mean"), rm, 2, 1e-6);
    assert_values(em_nn_get(bn, "running_var"), rv, 2, 1e-6);
    assert_close_rel(em_tensor_item(em_nn_get(bn, "num_batches_tracked")), 1, 0);

    assert_ok(em_nn_train(bn, false));
    static const float yeval[4] = {0.76276666, 1.2271403, 2.6696832, 4.294991};
    assert_values(em_nn_forward(bn, x), yeval, 4, 1e-6);
    assert_values(em_nn_get(bn, "running_mean"), rm, 2, 1e-6); /* unchanged in eval mode */
    assert_close_rel(em_tensor_item(em_nn_get(bn, "num_batches_tracked")), 1, 0);
    assert_ok(em_scope_end());
    em_nn_free(bn);

    /* options: a struct that never went through EM_NORM_OPTS_INIT is refused */
    assert_null(em_nn_batchnorm2d(3, &(em_norm_opts){.eps = 1e-5}));
    assert_error_contains("EM_NORM_OPTS_INIT");
    em_clear_error();
    em_norm_opts o = EM_NORM_OPTS_INIT;
    o.affine = false;
    o.track_running_stats = false;
    em_nn *bn2 = em_nn_batchnorm2d(3, &o);
    assert_nonnull_em(bn2);
    assert_int_equal(em_nn_num_parameters(bn2), 0);
    assert_int_equal(em_nn_num_buffers(bn2), 0);
    em_nn_free(bn2);
}

static void test_nn__layernorm(void **state)
{
    (void)state;
    em_nn *ln = em_nn_layernorm((const int64_t[]){3}, 1, NULL);
    assert_nonnull_em(ln);
    assert_string_equal(em_nn_parameter_name(ln, 0), "weight");
    static const float ones[3] = {1, 1, 1};
    assert_values(em_nn_get(ln, "weight"), ones, 3, 0);
    /* x = [1, 2, 3]: mean 2, biased var 2/3: (x - 2) / sqrt(2/3 + 1e-5) = [-1.2247356, 0, 1.2247356] */
    em_scope_begin();
    static const float want[3] = {-1.2247356f, 0, 1.2247356f};
    assert_values(em_nn_forward(ln, T(EM_SHAPE(1, 3), 1, 2, 3)), want, 3, 1e-6);
    assert_null(em_nn_forward(ln, T(EM_SHAPE(1, 2), 1, 2)));
    assert_error_contains("em_nn_forward: LayerNorm: ");
    em_clear_error();
    assert_ok(em_scope_end());
    em_nn_free(ln);
    assert_null(em_nn_layernorm((const int64_t[]){0}, 1, NULL));
}

static void test_nn__embedding(void **state)
{
    (void)state;
    /* torch.nn.Embedding initialises with normal_(): after seed 0 the weight starts with the same
     * numbers as torch.randn (torch 1.13.1: 1.5409961, -0.2934289, -2.1787894, 0.5684313, ...) */
    em_manual_seed(0);
    em_nn *e = em_nn_embedding(5, 3);
    assert_nonnull_em(e);
    static const float row0[3] = {1.5409961f, -0.2934289f, -2.1787894f};
    static const float row1[3] = {0.5684313f, -1.0845224f, -1.3985955f};
    em_scope_begin();
    em_tensor *idx = em_tensor_from((const int64_t[]){1, 0}, EM_I64, EM_SHAPE(1, 2), NULL);
    em_tensor *y = em_nn_forward(e, idx);
    int64_t shape[3];
    assert_int_equal(em_tensor_shape(y, shape, 3), 3);
    assert_int_equal(shape[0], 1);
    assert_int_equal(shape[1], 2);
    assert_int_equal(shape[2], 3);
    float got[6];
    helper_values(y, got, 6);
    for (int i = 0; i < 3; i++) {
        assert_close(got[i], row1[i], 1e-6, 1e-7);
        assert_close(got[3 + i], row0[i], 1e-6, 1e-7);
    }
    assert_ok(em_scope_end());
    em_nn_free(e);
}

static void test_nn__dropout_modes(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = em_arange(1, 101, 1, NULL);
    float xs[100], ys[100];
    helper_values(x, xs, 100);

    em_nn *d0 = em_nn_dropout(0.0); /* p = 0 in train mode: the identity */
    helper_values(em_nn_forward(d0, x), ys, 100);
    assert_memory_equal(xs, ys, sizeof xs);
    em_nn_free(d0);

    em_nn *d = em_nn_dropout(0.5);
    assert_ok(em_nn_train(d, false)); /* eval mode: the identity */
    helper_values(em_nn_forward(d, x), ys, 100);
    assert_memory_equal(xs, ys, sizeof xs);

    assert_ok(em_nn_train(d, true)); /* train mode: each element is 0 or x / (1 - p) = 2x */
    em_manual_seed(0);
    helper_values(em_nn_forward(d, x), ys, 100);
    int zeros = 0;
    for (int i = 0; i < 100; i++) {
        if (ys[i] == 0)
            zeros++;
        else
            assert_close_rel(ys[i], 2 * xs[i], 0);
    }
    assert_in_range(zeros, 20, 80);
    em_nn_free(d);
    assert_ok(em_scope_end());

    assert_null(em_nn_dropout(1.5));
    assert_error_contains("between 0 and 1");
}

/* ---- activations: the same ATen op as torch.nn ------------------------------------------------------- */

static void test_nn__activations_match_torch(void **state)
{
    (void)state;
    /* torch 1.13.1 on x = [-1.5, -0.2, 0, 0.7, 2] */
    static const float gelu[5] = {-0.10021086, -0.084148049, 0, 0.53062546, 1.95450};
    static const float leaky[5] = {-0.15, -0.02, 0, 0.7, 2};
    static const float sig[5] = {0.18242553, 0.45016602, 0.5, 0.66818774, 0.88079703};
    static const float tanh_[5] = {-0.90514827, -0.19737533, 0, 0.60436779, 0.96402758};
    static const float soft[5] = {0.019496426, 0.071538165, 0.087376915, 0.17595550, 0.64563292};
    static const float relu[5] = {0, 0, 0, 0.7f, 2};
    struct {
        em_nn *m;
        const char *kind;
        const float *want;
    } cases[] = {
        {em_nn_gelu(), "GELU", gelu},          {em_nn_leaky_relu(0.1), "LeakyReLU", leaky},
        {em_nn_sigmoid(), "Sigmoid", sig},     {em_nn_tanh(), "Tanh", tanh_},
        {em_nn_softmax(0), "Softmax", soft},   {em_nn_relu(), "ReLU", relu},
    };
    em_scope_begin();
    em_tensor *x = T(EM_SHAPE(5), -1.5, -0.2, 0, 0.7, 2);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_string_equal(em_nn_kind(cases[i].m), cases[i].kind);
        assert_int_equal(em_nn_num_parameters(cases[i].m), 0);
        assert_values(em_nn_forward(cases[i].m, x), cases[i].want, 5, 1e-6);
        em_nn_free(cases[i].m);
    }
    em_nn *fl = em_nn_flatten(1, -1);
    em_tensor *y = em_nn_forward(fl, em_zeros(EM_SHAPE(2, 3, 4, 5), NULL));
    int64_t shape[4];
    assert_int_equal(em_tensor_shape(y, shape, 4), 2);
    assert_int_equal(shape[0], 2);
    assert_int_equal(shape[1], 60);
    em_nn_free(fl);
    assert_ok(em_scope_end());
}

/* ---- dtype and device ------------------------------------------------------------------------------ */

static void test_nn__to_dtype_keeps_borrowed_handles(void **state)
{
    (void)state;
    em_nn *net = EM_NN_SEQUENTIAL(em_nn_linear(2, 2, true), em_nn_batchnorm1d(2, NULL));
    em_tensor *w = em_nn_get(net, "0.weight"); /* taken before the conversion */
    em_tensor *nbt = em_nn_get(net, "1.num_batches_tracked");
    assert_int_equal(em_tensor_dtype(w), EM_F32);
    assert_ok(em_nn_to_dtype(net, EM_F64));
    assert_int_equal(em_tensor_dtype(w), EM_F64);
    assert_true(em_tensor_requires_grad(w));
    assert_int_equal(em_tensor_dtype(em_nn_get(net, "1.running_var")), EM_F64);
    assert_int_equal(em_tensor_dtype(nbt), EM_I64); /* not floating: unchanged, as in torch */
    em_scope_begin();
    em_tensor *x = em_to_dtype(T(EM_SHAPE(2, 2), 1, 2, 3, 4), EM_F64);
    em_tensor *y = em_nn_forward(net, x);
    assert_int_equal(em_tensor_dtype(y), EM_F64);
    assert_ok(em_backward(em_sum(y)));
    assert_int_equal(em_tensor_dtype(em_tensor_grad(w)), EM_F64);
    /* the gradient follows the parameter back */
    assert_ok(em_nn_to_dtype(net, EM_F32));
    assert_int_equal(em_tensor_dtype(w), EM_F32);
    assert_int_equal(em_tensor_dtype(em_tensor_grad(w)), EM_F32);
    assert_ok(em_scope_end());
    assert_ok(em_nn_to_device(net, EM_DEVICE_CPU));
    assert_int_equal(em_tensor_device(w).type, EM_CPU);

    assert_int_equal(em_nn_to_dtype(net, EM_I64), EM_EINVAL);
    assert_error_contains("floating point");
    em_nn_free(net);
}

/* ---- ownership and errors -------------------------------------------------------------------------- */

static void test_nn__freeing_rules(void **state)
{
    (void)state;
    /* a child registered in a container is freed with it, never alone */
    em_nn *net = EM_NN_SEQUENTIAL(em_nn_linear(2, 2, true), em_nn_relu());
    em_nn *first = em_nn_child(net, "0");
    em_nn_free(first);
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_error_contains("belongs to a container");
    em_clear_error();
    assert_int_equal(em_nn_num_parameters(first), 2); /* still alive */
    em_nn_free(net);

    /* a NULL child (a failed constructor) frees the others and returns NULL, keeping the first
     * message; ASan reports a leak if the Linear and the ReLU were not freed */
    em_nn *bad = EM_NN_SEQUENTIAL(em_nn_linear(2, 2, true), em_nn_linear(0, 2, true), em_nn_relu());
    assert_null(bad);
    assert_error_contains("em_nn_linear: in_features must be > 0 (got 0)");
    em_clear_error();

    /* a child that already has a parent: refused, the others freed, the owned one left alone */
    em_nn *owner = EM_NN_SEQUENTIAL(em_nn_tanh());
    em_nn *owned = em_nn_child(owner, "0");
    assert_null(EM_NN_SEQUENTIAL(em_nn_relu(), owned));
    assert_error_contains("already belongs");
    em_clear_error();
    assert_string_equal(em_nn_kind(owned), "Tanh");
    /* the same child twice: refused, freed once */
    em_nn *twice = em_nn_relu();
    assert_null(EM_NN_SEQUENTIAL(twice, twice));
    assert_error_contains("twice");
    em_clear_error();
    em_nn_free(owner);

    /* em_nn_add with a NULL parent still takes the child */
    assert_int_equal(em_nn_add(NULL, "x", em_nn_relu()), EM_EINVAL);
    em_nn_free(NULL);
    assert_int_equal(em_last_status(), EM_OK);
}

static void test_nn__set_and_get_errors(void **state)
{
    (void)state;
    em_nn *lin = em_nn_linear(4, 3, true);
    static const float v[12] = {0};
    assert_int_equal(em_nn_set(lin, "weight", v, EM_F32, 10), EM_EINVAL);
    assert_error_contains("\"weight\"");
    assert_error_contains("12");
    assert_error_contains("10");
    em_clear_error();
    assert_int_equal(em_nn_set(lin, "wieght", v, EM_F32, 12), EM_EINVAL);
    assert_error_contains("\"wieght\"");
    assert_error_contains("weight, bias");
    em_clear_error();
    assert_null(em_nn_get(lin, "nope"));
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_error_contains("\"nope\"");
    em_clear_error();
    assert_null(em_nn_parameter(lin, 2));
    assert_error_contains("out of range");
    em_clear_error();
    /* set from int64 values: converted */
    assert_ok(em_nn_set(lin, "bias", (const int64_t[]){1, 2, 3}, EM_I64, 3));
    static const float b[3] = {1, 2, 3};
    assert_values(em_nn_get(lin, "bias"), b, 3, 0);
    /* NULL layer: EM_EINVAL without a message */
    assert_int_equal(em_nn_set(NULL, "bias", b, EM_F32, 3), EM_EINVAL);
    assert_int_equal(em_last_status(), EM_OK);
    assert_int_equal(em_nn_num_parameters(NULL), 0);
    em_nn_free(lin);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_nn__linear_init_matches_torch_seed, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__conv_init_and_output_shape, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__linear_forward_backward_by_hand, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__forward_error_names_the_layer, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__sequential_names_and_forward, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__container_of_sub_nets, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__custom_layer_trained_one_step_by_hand, helper_setup,
                                        helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__custom_layer_inside_sequential_and_with_children, helper_setup,
                                        helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__custom_layer_failure_keeps_its_message, helper_setup,
                                        helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__batchnorm_updates_running_stats_in_train_mode_only, helper_setup,
                                        helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__layernorm, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__embedding, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__dropout_modes, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__activations_match_torch, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__to_dtype_keeps_borrowed_handles, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__freeing_rules, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_nn__set_and_get_errors, helper_setup, helper_teardown),
    };
    return cmocka_run_group_tests_name("nn", tests, NULL, NULL);
}
