/* test_misuse_shim.c: a newcomer's mistakes with the shim's handles get a clear message, never a crash
 * (include/ember/common.h, "Misuse"; SQLite's API armor).
 *
 * Each case runs in a child process of its own (fork): a case that crashes fails with the signal's
 * name instead of ending the program, and the cases after it still run. CMocka's assertions run in
 * the child; its exit status carries the result. The parent calls no ember function before forking,
 * so no libtorch thread pool exists when it forks.
 *
 * Public header only, plus shim/backend.h for one case: the scope floor (emi_scope_floor_push/pop)
 * is what the trainer uses around a batch and has no public entry point; testing it here, on the
 * shim alone, needs the internal declaration.
 */
#define _GNU_SOURCE /* strsignal */
#include "helpers.h"

#include "../../shim/backend.h" /* emi_scope_floor_push / emi_scope_floor_pop: see above */

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

/* ---- helpers ------------------------------------------------------------------------------------- */

#define assert_misuse(needle)                                  \
    do {                                                       \
        assert_int_equal(em_last_status(), EM_EMISUSE);        \
        assert_error_contains(needle);                         \
        em_clear_error();                                      \
    } while (0)

static em_tensor *vec3(void)
{
    return em_tensor_from((const float[]){1, 2, 3}, EM_F32, EM_SHAPE(3), NULL);
}

/* warnings sent through the log handler, kept for the checks */
static char warnings[4096];
static int n_warnings;
static void keep_warning(void *user, em_log_level level, const char *message)
{
    (void)user;
    if (level != EM_LEVEL_WARNING)
        return;
    n_warnings++;
    snprintf(warnings, sizeof warnings, "%s", message);
}

/* ---- 1: handle armor ---------------------------------------------------------------------------------- */

static void tensor_double_free_and_use_after_free(void **state)
{
    (void)state;
    em_tensor *a = vec3();
    em_tensor *b = vec3();
    assert_nonnull_em(a);
    em_tensor_free(a);
    assert_int_equal(em_last_status(), EM_OK);
    em_tensor_free(a); /* double free */
    assert_misuse("em_tensor_free: this tensor was already freed");
    assert_null(em_add(a, b)); /* use after free, first argument */
    assert_misuse("em_add: argument 1 is a freed tensor");
    assert_null(em_mse_loss(b, a, EM_REDUCTION_MEAN));
    assert_misuse("em_mse_loss: argument 2 is a freed tensor");
    assert_true(isnan(em_tensor_item(a)));
    assert_misuse("em_tensor_item: argument 1");
    assert_int_equal(em_tensor_numel(a), -1);
    assert_misuse("em_tensor_numel");
    assert_int_equal(em_backward(a), EM_EMISUSE);
    assert_misuse("em_backward");
    assert_int_equal(em_copy_(b, a), EM_EMISUSE);
    assert_misuse("em_copy_: argument 2");
    assert_null(em_keep(a));
    assert_misuse("em_keep");
    em_tensor *list[2] = {b, a};
    assert_null(em_cat(list, 2, 0));
    assert_misuse("em_cat: element 1");
    char buf[64];
    em_tensor_describe(a, buf, sizeof buf);
    assert_string_equal(buf, "tensor(freed)");
    /* the live handle still works */
    assert_close_rel(em_tensor_item(em_sum(b)), 6, 0);
    em_tensor_free(b);
    assert_int_equal(em_last_status(), EM_OK);
}

static void wrong_kind_of_handle(void **state)
{
    (void)state;
    em_nn *lin = em_nn_linear(3, 1, true);
    assert_nonnull_em(lin);
    assert_null(em_relu((const em_tensor *)(const void *)lin));
    assert_misuse("em_relu: argument 1 is not a valid tensor handle");
    em_tensor *x = vec3();
    assert_null(em_nn_forward((em_nn *)(void *)x, x));
    assert_misuse("em_nn_forward: argument 1 is not a valid layer handle");
    em_tensor_free(x);
    em_nn_free(lin);
    assert_int_equal(em_last_status(), EM_OK);
}

static void layer_double_free_and_use_after_free(void **state)
{
    (void)state;
    em_nn *lin = em_nn_linear(3, 1, true);
    em_tensor *w = em_nn_parameter(lin, 0);
    assert_nonnull_em(w);
    em_nn_free(lin);
    assert_int_equal(em_last_status(), EM_OK);
    em_nn_free(lin);
    assert_misuse("em_nn_free: this layer was already freed");
    em_tensor *x = vec3();
    assert_null(em_nn_forward(lin, x));
    assert_misuse("em_nn_forward: argument 1 is a freed layer");
    assert_int_equal(em_nn_train(lin, true), EM_EMISUSE);
    assert_misuse("em_nn_train");
    assert_int_equal(em_nn_num_parameters(lin), 0);
    assert_misuse("em_nn_num_parameters");
    /* a parameter handle dies with its layer */
    assert_null(em_mul(w, x));
    assert_misuse("em_mul: argument 1 is a freed tensor");
    /* a child freed with its container */
    em_nn *inner = em_nn_relu();
    em_nn *seq = em_nn_sequential((em_nn *[]){inner}, 1);
    assert_nonnull_em(seq);
    em_nn_free(seq);
    assert_int_equal(em_last_status(), EM_OK);
    em_nn_free(inner);
    assert_misuse("em_nn_free: this layer was already freed");
    /* a freed layer handed to a container is refused, the live one freed with the failure */
    em_nn *dead = em_nn_tanh();
    em_nn_free(dead);
    assert_null(em_nn_sequential((em_nn *[]){em_nn_relu(), dead}, 2));
    assert_misuse("em_nn_sequential: child 1 is not a live layer");
    em_tensor_free(x);
    assert_int_equal(em_last_status(), EM_OK);
}

static void params_and_optimizer_double_free(void **state)
{
    (void)state;
    em_nn *lin = em_nn_linear(3, 1, true);
    em_params *ps = em_nn_parameters(lin);
    assert_nonnull_em(ps);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    assert_nonnull_em(opt);
    em_params_free(ps);
    assert_int_equal(em_last_status(), EM_OK);
    em_params_free(ps);
    assert_misuse("em_params_free: this parameter list was already freed");
    assert_int_equal(em_params_size(ps), 0);
    assert_misuse("em_params_size");
    assert_null(em_sgd(ps, &(em_sgd_opts){.lr = 0.1}));
    assert_misuse("em_sgd: params is not a live parameter list");
    assert_int_equal(em_clip_grad_norm(ps, 1.0, 2.0, NULL), EM_EMISUSE);
    assert_misuse("em_clip_grad_norm");

    assert_ok(em_optimizer_zero_grad(opt));
    em_optimizer_free(opt);
    assert_int_equal(em_last_status(), EM_OK);
    em_optimizer_free(opt);
    assert_misuse("em_optimizer_free: this optimizer was already freed");
    assert_int_equal(em_optimizer_step(opt, NULL), EM_EMISUSE);
    assert_misuse("em_optimizer_step: argument 1 is a freed optimizer");
    assert_int_equal(em_optimizer_zero_grad(opt), EM_EMISUSE);
    assert_misuse("em_optimizer_zero_grad");
    assert_true(isnan(em_optimizer_lr(opt, 0)));
    assert_misuse("em_optimizer_get");
    em_nn_free(lin);
    assert_int_equal(em_last_status(), EM_OK);
}

/* ---- 4: a NULL argument with no error recorded ------------------------------------------------------------- */

static void null_argument_is_named(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *x = em_zeros(EM_SHAPE(4, 1), NULL);
    em_tensor *batch[2] = {x, NULL}; /* the user's batch had no second tensor */
    assert_null(em_mse_loss(batch[0], batch[1], EM_REDUCTION_MEAN));
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_string_equal(em_last_error(), "em_mse_loss: argument 2 is NULL");
    em_clear_error();
    em_nn *lin = em_nn_linear(1, 1, true);
    assert_null(em_nn_forward(lin, NULL));
    assert_string_equal(em_last_error(), "em_nn_forward: argument 2 is NULL");
    em_clear_error();
    assert_null(em_nn_forward(NULL, x));
    assert_string_equal(em_last_error(), "em_nn_forward: argument 1 is NULL");
    em_clear_error();
    assert_int_equal(em_add_(x, NULL, 1.0), EM_EINVAL);
    assert_string_equal(em_last_error(), "em_add_: argument 2 is NULL");
    em_clear_error();
    assert_null(em_sgd(NULL, &(em_sgd_opts){.lr = 0.1}));
    assert_error_contains("em_sgd: params is NULL");
    em_clear_error();
    /* the chain-check pattern: an error recorded first keeps its message */
    em_tensor *bad = em_matmul(x, em_zeros(EM_SHAPE(3, 3), NULL));
    assert_null(bad);
    assert_int_equal(em_last_status(), EM_ETORCH);
    assert_null(em_mse_loss(em_relu(bad), x, EM_REDUCTION_MEAN));
    assert_int_equal(em_last_status(), EM_ETORCH);
    assert_error_contains("em_matmul");
    em_clear_error();
    /* optional arguments stay optional */
    assert_nonnull_em(em_linear(x, em_nn_parameter(lin, 0), NULL));
    assert_int_equal(em_last_status(), EM_OK);
    em_nn_free(lin);
    assert_ok(em_scope_end());
}

/* ---- 3: scopes ------------------------------------------------------------------------------------------ */

static void scope_floor_refuses_to_close_the_trainers_scope(void **state)
{
    (void)state;
    em_scope_begin(); /* as the trainer does around a batch */
    int prev = emi_scope_floor_push();
    em_tensor *kept = vec3(); /* owned by the trainer's scope */
    /* the user's own scopes work as ever */
    em_scope_begin();
    em_tensor *tmp = vec3();
    assert_nonnull_em(em_keep(tmp));
    assert_ok(em_scope_end());
    /* one end too many, inside the step: reported, nothing released */
    assert_int_equal(em_scope_end(), EM_EMISUSE);
    assert_misuse("em_scope_end: the innermost open scope is one ember opened");
    assert_int_equal(em_scope_depth(), 1);
    assert_close_rel(em_tensor_item(em_sum(kept)), 6, 0);
    assert_close_rel(em_tensor_item(em_sum(tmp)), 6, 0);
    emi_scope_floor_pop(prev);
    assert_ok(em_scope_end());
    assert_int_equal(em_scope_depth(), 0);
    /* with no floor an unbalanced end is EM_ESTATE, as before */
    assert_int_equal(em_scope_end(), EM_ESTATE);
    em_clear_error();
}

static void free_a_scope_owned_tensor(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *a = vec3();
    em_tensor *b = em_mul_scalar(a, 2);
    em_tensor_free(a); /* taken out of its scope, then freed: the scope's end does not free it again */
    assert_int_equal(em_last_status(), EM_OK);
    assert_ok(em_scope_end());
    assert_int_equal(em_last_status(), EM_OK);
    assert_null(em_neg(a));
    assert_misuse("em_neg: argument 1 is a freed tensor");
    (void)b;
}

static em_tensor *helper_that_forgets_em_keep(void)
{
    em_scope_begin();
    em_tensor *r = em_mul_scalar(vec3(), 3);
    em_scope_end();
    return r; /* released by its scope */
}

static void handle_released_by_its_scope(void **state)
{
    (void)state;
    em_tensor *r = helper_that_forgets_em_keep();
    assert_true(isnan(em_tensor_item(r)));
    assert_misuse("em_tensor_item: argument 1 is a freed tensor");
    em_tensor_free(r);
    assert_misuse("em_tensor_free: this tensor was already freed");
}

static em_tensor *forward_returning_a_freed_tensor(em_nn *self, const em_tensor *x)
{
    (void)self;
    em_scope_begin();
    em_tensor *y = em_mul_scalar(x, 2);
    em_scope_end(); /* forgot em_keep: y is freed */
    return y;
}

static em_tensor *closure_returning_a_freed_tensor(void *ctx)
{
    em_nn *lin = ctx;
    em_scope_begin();
    em_tensor *loss = em_sum(em_nn_forward(lin, vec3()));
    em_scope_end(); /* forgot em_keep */
    return loss;
}

static void callbacks_returning_freed_handles(void **state)
{
    (void)state;
    static const em_nn_ops ops = {.version = EM_NN_OPS_VERSION, .forward = forward_returning_a_freed_tensor};
    em_nn *custom = em_nn_custom(&ops, NULL);
    assert_nonnull_em(custom);
    em_scope_begin();
    assert_null(em_nn_forward(custom, vec3()));
    assert_misuse("em_nn_forward: Custom: forward returned a freed tensor handle");
    assert_ok(em_scope_end());
    em_nn_free(custom);

    em_nn *lin = em_nn_linear(3, 1, true);
    em_params *ps = em_nn_parameters(lin);
    em_optimizer *opt = em_sgd(ps, &(em_sgd_opts){.lr = 0.1});
    assert_int_equal(em_optimizer_step(opt, &(em_closure){closure_returning_a_freed_tensor, lin}), EM_EMISUSE);
    assert_misuse("the closure returned a freed tensor handle");
    assert_int_equal(em_scope_depth(), 0);
    em_optimizer_free(opt);
    em_params_free(ps);
    em_nn_free(lin);
    assert_int_equal(em_last_status(), EM_OK);
}

static void persist_takes_a_tensor_out_of_its_scope(void **state)
{
    (void)state;
    em_nn *lin = em_nn_linear(3, 1, false);
    em_tensor *w = em_nn_parameter(lin, 0);
    /* optimizer state made lazily inside a step, which runs in a scope */
    em_tensor *momentum = NULL;
    for (int step = 0; step < 3; step++) {
        em_scope_begin();
        if (momentum == NULL)
            momentum = em_tensor_persist(em_zeros_like(w));
        assert_nonnull_em(momentum);
        assert_ok(em_add_(momentum, em_ones_like(w), 1.0));
        assert_ok(em_scope_end());
    }
    assert_close_rel(em_tensor_item(em_sum(momentum)), 9, 0); /* 3 entries, 3 steps */
    em_tensor_free(momentum);
    assert_int_equal(em_last_status(), EM_OK);
    /* a tensor the caller already owns: unchanged */
    em_tensor *own = vec3();
    assert_ptr_equal(em_tensor_persist(own), own);
    em_tensor_free(own);
    /* a borrowed handle is its owner's to free */
    assert_null(em_tensor_persist(w));
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_error_contains("em_tensor_persist: this handle is borrowed");
    em_clear_error();
    em_scope_begin();
    em_tensor *mine = em_tensor_persist(em_tensor_ref(w));
    assert_ok(em_scope_end());
    assert_nonnull_em(mine);
    em_tensor_free(mine);
    em_nn_free(lin);
    assert_int_equal(em_last_status(), EM_OK);
}

/* ---- 2: out of memory under RLIMIT_AS -------------------------------------------------------------------- */

static void out_of_memory_is_an_error_not_an_abort(void **state)
{
    (void)state;
    if (UNDER_ASAN) {
        printf("skipped: AddressSanitizer reserves its own shadow address space; an RLIMIT_AS tight enough to "
               "make allocations fail would stop the sanitizer itself\n");
        skip();
    }
    /* warm up what the calls below touch once, so the limit hits the calls and not first-use setup */
    em_scope_begin();
    em_no_grad_begin();
    assert_nonnull_em(em_zeros(EM_SHAPE(4), NULL));
    assert_ok(em_no_grad_end());
    assert_ok(em_scope_end());

    /* the address space in use now, plus 64 MiB */
    long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%ld", &pages), 1);
    fclose(f);
    rlim_t used = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE);
    struct rlimit lim = {.rlim_cur = used + ((rlim_t)64 << 20), .rlim_max = RLIM_INFINITY};
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_AS, &old), 0);
    lim.rlim_max = old.rlim_max;
    assert_int_equal(setrlimit(RLIMIT_AS, &lim), 0);

    /* a tensor larger than the limit: NULL with a message */
    assert_null(em_zeros(EM_SHAPE(1 << 20, 1 << 10), NULL)); /* 4 GiB */
    assert_true(em_last_status() == EM_ENOMEM || em_last_status() == EM_ETORCH);
    assert_error_contains("em_zeros");
    em_clear_error();

    /* use up the rest with ballast, so that the shim's own small allocations fail */
    void *ballast[1 << 16];
    size_t nb = 0;
    for (size_t sz = (size_t)1 << 20; sz >= 64; sz /= 4)
        while (nb < sizeof ballast / sizeof ballast[0] && (ballast[nb] = malloc(sz)) != NULL)
            nb++;

    /* nested scopes until one cannot be opened: recorded, and the pairs stay matched */
    int depth0 = em_scope_depth();
    int begun = 0;
    while (em_last_status() == EM_OK && begun < 100000000) {
        em_scope_begin();
        begun++;
    }
    em_status scope_status = em_last_status();
    char scope_msg[256];
    snprintf(scope_msg, sizeof scope_msg, "%s", em_last_error());
    em_clear_error();
    int closed_ok = 1;
    for (int i = 0; i < begun; i++)
        closed_ok = closed_ok && em_scope_end() == EM_OK;
    int depth_after = em_scope_depth();

    /* no_grad the same way */
    int ng = 0;
    while (em_last_status() == EM_OK && ng < 100000000) {
        em_no_grad_begin();
        ng++;
    }
    em_status ng_status = em_last_status();
    em_clear_error();
    int ng_closed_ok = 1;
    for (int i = 0; i < ng; i++)
        ng_closed_ok = ng_closed_ok && em_no_grad_end() == EM_OK;
    bool grad_after = em_is_grad_enabled();

    /* no tensor op here: with the heap exhausted, libtorch 1.13 itself crashes while building its
     * error (c10::get_backtrace does not check backtrace_symbols for NULL), before ember could catch
     * anything; the 4 GiB em_zeros above is torch's out-of-memory path with room left for the message */
    while (nb > 0)
        free(ballast[--nb]);
    setrlimit(RLIMIT_AS, &old);

    printf("scope_begin: %d calls, then %s: %s\n", begun, em_status_name(scope_status), scope_msg);
    printf("no_grad_begin: %d calls, then %s\n", ng, em_status_name(ng_status));
    if (begun < 100000000) {
        assert_int_equal(scope_status, EM_ENOMEM);
        assert_non_null(strstr(scope_msg, "em_scope_begin: out of memory"));
    }
    assert_true(closed_ok);
    assert_int_equal(depth_after, depth0);
    if (ng < 100000000)
        assert_int_equal(ng_status, EM_ENOMEM);
    assert_true(ng_closed_ok);
    assert_true(grad_after);
}

/* ---- 5: losses whose shapes differ ---------------------------------------------------------------------- */

static void losses_warn_or_refuse_on_different_sizes(void **state)
{
    (void)state;
    em_set_log_handler(keep_warning, NULL);
    em_scope_begin();
    em_tensor *pred = em_zeros(EM_SHAPE(16, 1), NULL);
    em_tensor *target = em_ones(EM_SHAPE(16), NULL);
    em_tensor *same = em_ones(EM_SHAPE(16, 1), NULL);

    n_warnings = 0;
    em_tensor *l = em_mse_loss(pred, target, EM_REDUCTION_NONE);
    assert_nonnull_em(l); /* torch computes it, broadcast to [16, 16] */
    assert_int_equal(em_tensor_dim(l), 2);
    assert_int_equal(n_warnings, 1);
    assert_non_null(strstr(warnings, "em_mse_loss: Using a target size (torch.Size([16])) that is different to the "
                                     "input size (torch.Size([16, 1])). This will likely lead to incorrect results "
                                     "due to broadcasting. Please ensure they have the same size."));
    assert_nonnull_em(em_l1_loss(pred, target, EM_REDUCTION_MEAN));
    assert_int_equal(n_warnings, 2);
    assert_non_null(strstr(warnings, "em_l1_loss: Using a target size"));
    assert_nonnull_em(em_smooth_l1_loss(pred, target, EM_REDUCTION_MEAN, 1.0));
    assert_int_equal(n_warnings, 3);
    assert_non_null(strstr(warnings, "em_smooth_l1_loss: Using a target size"));
    /* same sizes: no warning */
    assert_nonnull_em(em_mse_loss(pred, same, EM_REDUCTION_MEAN));
    assert_int_equal(n_warnings, 3);
    assert_int_equal(em_last_status(), EM_OK);

    /* the BCE losses raise (torch 1.13's ValueError) */
    em_tensor *p = em_sigmoid(pred);
    assert_null(em_bce_loss(p, target, NULL, EM_REDUCTION_MEAN));
    assert_error_contains("em_bce_loss: Using a target size (torch.Size([16])) that is different to the input size "
                          "(torch.Size([16, 1])) is deprecated. Please ensure they have the same size.");
    em_clear_error();
    assert_null(em_bce_with_logits(pred, target, NULL, NULL, EM_REDUCTION_MEAN));
    assert_error_contains("em_bce_with_logits: Target size (torch.Size([16])) must be the same as input size "
                          "(torch.Size([16, 1]))");
    em_clear_error();
    assert_int_equal(n_warnings, 3);
    assert_ok(em_scope_end());
    em_set_log_handler(NULL, NULL);
}

/* ---- 6: em_tensor_set_grad ------------------------------------------------------------------------------ */

static void set_grad_checks_shape_and_type(void **state)
{
    (void)state;
    em_scope_begin();
    em_tensor *w = em_zeros(EM_SHAPE(3), &(em_tensor_opts){.requires_grad = true});
    assert_int_equal(em_tensor_set_grad(w, em_ones(EM_SHAPE(4), NULL)), EM_EINVAL);
    assert_error_contains("em_tensor_set_grad: assigned grad has data of a different size");
    em_clear_error();
    assert_int_equal(em_tensor_set_grad(w, em_ones(EM_SHAPE(3), &(em_tensor_opts){.dtype = EM_F64})), EM_EINVAL);
    assert_error_contains("em_tensor_set_grad: assigned grad has data of a different type");
    em_clear_error();
    assert_int_equal(em_tensor_set_grad(w, w), EM_EINVAL);
    assert_error_contains("can't assign Variable as its own grad");
    em_clear_error();
    assert_null(em_tensor_grad(w)); /* nothing was set */
    assert_ok(em_tensor_set_grad(w, em_ones(EM_SHAPE(3), NULL)));
    assert_close_rel(em_tensor_item(em_sum(em_tensor_grad(w))), 3, 0);
    assert_ok(em_tensor_set_grad(w, NULL));
    assert_null(em_tensor_grad(w));
    assert_ok(em_scope_end());
}

/* ---- 7: hostile sizes ------------------------------------------------------------------------------------ */

static void shapes_whose_size_overflows(void **state)
{
    (void)state;
    const int64_t big = (int64_t)1 << 40;
    assert_null(em_zeros(EM_SHAPE(big, big), NULL));
    assert_int_equal(em_last_status(), EM_EINVAL);
    assert_error_contains("em_zeros: the shape's number of elements overflows int64");
    em_clear_error();
    assert_null(em_tensor_from((const float[]){0}, EM_F32, EM_SHAPE(big, big, big), NULL));
    assert_error_contains("em_tensor_from: the shape's number of elements overflows");
    em_clear_error();
    assert_null(em_randn(EM_SHAPE(INT64_MAX, 2), NULL));
    assert_error_contains("overflows");
    em_clear_error();
    em_scope_begin();
    em_tensor *x = vec3();
    assert_null(em_reshape(x, EM_SHAPE(big, -1, big)));
    assert_error_contains("em_reshape: the shape's number of elements overflows");
    em_clear_error();
    /* a shape with a zero holds nothing, whatever the other sizes */
    em_tensor *e = em_zeros(EM_SHAPE(0, big), NULL);
    assert_nonnull_em(e);
    assert_int_equal(em_tensor_numel(e), 0);
    assert_ok(em_scope_end());
}

/* ---- the fork runner ------------------------------------------------------------------------------------- */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(tensor_double_free_and_use_after_free, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(wrong_kind_of_handle, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(layer_double_free_and_use_after_free, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(params_and_optimizer_double_free, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(null_argument_is_named, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(scope_floor_refuses_to_close_the_trainers_scope, helper_setup,
                                        helper_teardown),
        cmocka_unit_test_setup_teardown(free_a_scope_owned_tensor, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(handle_released_by_its_scope, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(callbacks_returning_freed_handles, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(persist_takes_a_tensor_out_of_its_scope, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(out_of_memory_is_an_error_not_an_abort, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(losses_warn_or_refuse_on_different_sizes, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(set_grad_checks_shape_and_type, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(shapes_whose_size_overflows, helper_setup, helper_teardown),
    };
    size_t n = sizeof tests / sizeof tests[0];
    int failed = 0;
    const char *only = getenv("EMBER_MISUSE_CASE"); /* run one case by name */
    for (size_t i = 0; i < n; i++) {
        if (only != NULL && strcmp(only, tests[i].name) != 0)
            continue;
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            int r = _cmocka_run_group_tests(tests[i].name, &tests[i], 1, NULL, NULL);
            fflush(NULL);
            _exit(r == 0 ? 0 : 1);
        }
        int status = 0;
        while (waitpid(pid, &status, 0) < 0) {
        }
        if (WIFSIGNALED(status)) {
            int sig = WTERMSIG(status);
            fprintf(stderr, "[  CRASHED ] %s: killed by signal %d (SIG%s: %s)\n", tests[i].name, sig,
                    sigabbrev_np(sig) != NULL ? sigabbrev_np(sig) : "?", strsignal(sig));
            failed++;
        } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            failed++;
        }
    }
    printf("%d of %zu misuse cases failed\n", failed, n);
    return failed == 0 ? 0 : 1;
}
