/* test_checkpoint_optim.c: checkpoints of a layer and its optimizers (em_checkpoint_save/load).
 * For SGD (momentum, nesterov), Adam (amsgrad), AdamW, RMSprop (centered, momentum) and Adagrad, each
 * with two parameter groups: train 4 steps, checkpoint, train 4 more; a second run built with other
 * weights and other hyper-parameters, which has taken a step of its own, restores the checkpoint and
 * trains the same 4 steps: its weights equal the first run's bit for bit, and so does the step count.
 * Then the refusals: another optimizer type, another number of optimizers, another layer, a weights
 * file, an optimizer written in C without state_save - each with its message and nothing changed.
 * (LBFGS and C optimizers with state ops: test_resume_optim.c.) */
#define _POSIX_C_SOURCE 200809L
#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char dir[64];
static char ckpt[128];

enum { SGD, ADAM, ADAMW, RMSPROP, ADAGRAD, N_KINDS };
static const char *const kind_name[N_KINDS] = {"SGD", "Adam", "AdamW", "RMSprop", "Adagrad"};

static em_nn *make_net(uint64_t seed)
{
    em_manual_seed(seed);
    return EM_NN_SEQUENTIAL(em_nn_linear(4, 8, true), em_nn_tanh(), em_nn_linear(8, 2, true));
}

/* The optimizer of `kind` over the net's two linear layers, one group each; `lr` for the first group
 * (the second gets lr / 2). */
static em_optimizer *make_opt(int kind, em_nn *net, double lr)
{
    em_params *p0 = em_params_new(), *p2 = em_params_new();
    assert_ok(em_params_add_nn(p0, em_nn_child(net, "0")));
    assert_ok(em_params_add_nn(p2, em_nn_child(net, "2")));
    em_optimizer *o = NULL;
    switch (kind) {
    case SGD: o = em_sgd(p0, &(em_sgd_opts){.lr = lr, .momentum = 0.9, .nesterov = true}); break;
    case ADAM: {
        em_adam_opts a = EM_ADAM_OPTS_INIT;
        a.lr = lr, a.amsgrad = true, a.beta1 = 0.5;
        o = em_adam(p0, &a);
        break;
    }
    case ADAMW: {
        em_adam_opts a = EM_ADAMW_OPTS_INIT;
        a.lr = lr;
        o = em_adamw(p0, &a);
        break;
    }
    case RMSPROP: {
        em_rmsprop_opts r = EM_RMSPROP_OPTS_INIT;
        r.lr = lr, r.centered = true, r.momentum = 0.5;
        o = em_rmsprop(p0, &r);
        break;
    }
    case ADAGRAD: {
        em_adagrad_opts g = EM_ADAGRAD_OPTS_INIT;
        g.lr = lr, g.lr_decay = 0.01, g.initial_accumulator_value = 0.1;
        o = em_adagrad(p0, &g);
        break;
    }
    }
    assert_nonnull_em(o);
    assert_ok(em_optimizer_add_param_group(o, p2));
    assert_ok(em_optimizer_set_lr(o, 1, lr / 2));
    em_params_free(p0);
    em_params_free(p2);
    return o;
}

/* Steps first..last-1 on batches that depend on the step only. */
static void train(em_nn *net, em_optimizer *opt, int first, int last)
{
    for (int s = first; s < last; s++) {
        em_scope_begin();
        em_generator *g = em_generator_new(1000 + (uint64_t)s);
        em_tensor_opts o = {.generator = g};
        em_tensor *x = em_randn(EM_SHAPE(16, 4), &o);
        em_tensor *y = em_randn(EM_SHAPE(16, 2), &o);
        assert_ok(em_optimizer_zero_grad(opt));
        assert_ok(em_backward(em_mse_loss(em_nn_forward(net, x), y, EM_REDUCTION_MEAN)));
        assert_ok(em_optimizer_step(opt, NULL));
        em_generator_free(g);
        em_scope_end();
    }
}

static em_status plain_step(em_optimizer *self, const em_closure *closure)
{
    (void)self, (void)closure;
    return EM_OK;
}

static const em_optimizer_ops stateless_v2_ops = {.version = 2, .name = "PlainC", .step = plain_step};

static void weights(const em_nn *net, float *out, size_t cap)
{
    size_t at = 0;
    for (size_t i = 0; i < em_nn_num_parameters(net); i++) {
        const em_tensor *p = em_nn_parameter(net, i);
        size_t n = (size_t)em_tensor_numel(p);
        assert_true(at + n <= cap);
        assert_ok(em_tensor_copy_to(p, out + at, n * sizeof(float), EM_F32));
        at += n;
    }
}

static void test_checkpoint__resume_is_bit_exact_for_each_optimizer(void **state)
{
    (void)state;
    for (int kind = 0; kind < N_KINDS; kind++) {
        em_nn *a = make_net(0);
        em_optimizer *oa = make_opt(kind, a, 0.05);
        train(a, oa, 0, 4);
        assert_ok(em_checkpoint_save(ckpt, a, &oa, 1, NULL, 0, &(em_safetensors_meta){"note", "test"}, 1));
        train(a, oa, 4, 8);
        float wa[64] = {0}, wb[64] = {0};
        weights(a, wa, 64);

        em_nn *b = make_net(1);             /* other weights */
        em_optimizer *ob = make_opt(kind, b, 0.3); /* other learning rates */
        train(b, ob, 0, 1);                 /* and a state of its own */
        assert_ok(em_checkpoint_load(ckpt, b, &ob, 1, NULL, 0));
        assert_int_equal(em_optimizer_step_count(ob), 4);
        assert_true(em_optimizer_lr(ob, 0) == 0.05);
        assert_true(em_optimizer_lr(ob, 1) == 0.025);
        train(b, ob, 4, 8);
        weights(b, wb, 64);
        if (memcmp(wa, wb, sizeof wa) != 0)
            fail_msg("%s: the resumed run's weights differ from the uninterrupted run's", kind_name[kind]);
        assert_int_equal(em_optimizer_step_count(ob), em_optimizer_step_count(oa));

        /* the same weights with a fresh optimizer (no state) end elsewhere: the comparison above
         * does see the optimizer's state */
        em_nn *c = make_net(2);
        em_optimizer *oc = make_opt(kind, c, 0.05);
        assert_ok(em_checkpoint_load(ckpt, c, &oc, 1, NULL, 0));
        em_optimizer *fresh = make_opt(kind, c, 0.05);
        train(c, fresh, 4, 8);
        float wc[64] = {0};
        weights(c, wc, 64);
        assert_true(memcmp(wa, wc, sizeof wa) != 0);
        em_optimizer_free(fresh);
        em_optimizer_free(oc);
        em_nn_free(c);
        em_nn_free(a);
        em_nn_free(b);
        em_optimizer_free(oa);
        em_optimizer_free(ob);
    }
}

/* The state is in the file under torch's keys, the description in the metadata. */
static void test_checkpoint__file_layout(void **state)
{
    (void)state;
    em_nn *a = make_net(0);
    em_optimizer *oa = make_opt(ADAM, a, 0.01);
    train(a, oa, 0, 3);
    assert_ok(em_checkpoint_save(ckpt, a, &oa, 1, NULL, 0, NULL, 0));
    em_safetensors *f = em_safetensors_open(ckpt);
    assert_nonnull_em(f);
    assert_string_equal(em_safetensors_meta_find(f, "ember.checkpoint"), "1");
    const char *json = em_safetensors_meta_find(f, "ember.optimizers");
    assert_non_null(json);
    assert_non_null(strstr(json, "\"name\":\"Adam\""));
    assert_non_null(strstr(json, "\"step_count\":3"));
    assert_non_null(strstr(json, "\"amsgrad\":1"));
    assert_true(em_safetensors_find(f, "model.0.weight") >= 0);
    /* 4 parameters, 4 state tensors each with amsgrad */
    const char *keys[] = {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
    for (int p = 0; p < 4; p++)
        for (int k = 0; k < 4; k++) {
            char name[64];
            snprintf(name, sizeof name, "optimizers.0.state.%d.%s", p, keys[k]);
            int64_t i = em_safetensors_find(f, name);
            assert_true(i >= 0);
            if (k == 0) {
                assert_string_equal(em_safetensors_dtype(f, (size_t)i), "I64");
                em_scope_begin();
                int64_t step;
                assert_ok(em_tensor_copy_to(em_safetensors_tensor(f, (size_t)i), &step, sizeof step, EM_I64));
                assert_int_equal(step, 3);
                em_scope_end();
            }
        }
    assert_int_equal(em_safetensors_count(f), 4 + 16);
    em_safetensors_free(f);
    em_nn_free(a);
    em_optimizer_free(oa);
}

static void test_checkpoint__incompatible_setups_refused(void **state)
{
    (void)state;
    em_nn *a = make_net(0);
    em_optimizer *oa = make_opt(ADAM, a, 0.01);
    train(a, oa, 0, 2);
    assert_ok(em_checkpoint_save(ckpt, a, &oa, 1, NULL, 0, NULL, 0));

    em_nn *b = make_net(1);
    em_optimizer *sgd = make_opt(SGD, b, 0.7);
    float before[64] = {0}, after[64] = {0};
    weights(b, before, 64);
    assert_int_equal(em_checkpoint_load(ckpt, b, &sgd, 1, NULL, 0), EM_EINVAL);
    assert_error_contains("optimizer 0 is Adam in the checkpoint but SGD here");
    assert_error_contains(ckpt);
    em_clear_error();
    em_optimizer *two[2] = {sgd, sgd};
    assert_int_equal(em_checkpoint_load(ckpt, b, two, 2, NULL, 0), EM_EINVAL);
    assert_error_contains("the checkpoint has 1 optimizers, 2 given");
    em_clear_error();
    /* a layer with other shapes: refused before the optimizer changes */
    em_manual_seed(3);
    em_nn *wide = EM_NN_SEQUENTIAL(em_nn_linear(4, 8, true), em_nn_tanh(), em_nn_linear(8, 3, true));
    em_optimizer *ow = make_opt(ADAM, wide, 0.7);
    assert_int_equal(em_checkpoint_load(ckpt, wide, &ow, 1, NULL, 0), EM_EINVAL);
    assert_error_contains("has another shape here");
    em_clear_error();
    assert_true(em_optimizer_lr(ow, 0) == 0.7);
    /* a weights file is not a checkpoint */
    char wpath[160];
    snprintf(wpath, sizeof wpath, "%s/w.safetensors", dir);
    assert_ok(em_nn_save_safetensors(b, wpath, NULL, 0));
    em_optimizer *ob = make_opt(ADAM, b, 0.7);
    assert_int_equal(em_checkpoint_load(wpath, b, &ob, 1, NULL, 0), EM_EINVAL);
    assert_error_contains("not an ember checkpoint");
    em_clear_error();
    remove(wpath);
    weights(b, after, 64);
    assert_memory_equal(before, after, sizeof before);
    assert_true(em_optimizer_lr(ob, 0) == 0.7);
    /* an optimizer written in C without state_save (ops version 2): said so, nothing written */
    em_params *ps = em_nn_parameters(b);
    em_optimizer *lb = em_optimizer_new(&stateless_v2_ops, ps, 0.1, NULL);
    em_params_free(ps);
    char lpath[160];
    snprintf(lpath, sizeof lpath, "%s/l.safetensors", dir);
    assert_int_equal(em_checkpoint_save(lpath, b, &lb, 1, NULL, 0, NULL, 0), EM_EUNSUPPORTED);
    assert_error_contains("optimizer \"PlainC\" is written in C and its em_optimizer_ops have no state_save");
    em_clear_error();
    assert_int_equal(access(lpath, F_OK), -1);
    /* reserved metadata keys */
    assert_int_equal(em_checkpoint_save(lpath, b, &ob, 1, NULL, 0, &(em_safetensors_meta){"ember.x", "1"}, 1),
                     EM_EINVAL);
    em_clear_error();
    em_optimizer_free(lb);
    em_optimizer_free(ob);
    em_optimizer_free(ow);
    em_optimizer_free(sgd);
    em_optimizer_free(oa);
    em_nn_free(wide);
    em_nn_free(a);
    em_nn_free(b);
}

/* Rewrite the checkpoint at `from` to `to`, changing it on the way: the tensor named `drop` left out,
 * the tensor `replace` replaced by `with` (NULL: kept), metadata `key` set to `value` (NULL: kept). */
static void rewrite(const char *from, const char *to, const char *drop, const char *replace, em_tensor *with,
                    const char *key, const char *value)
{
    em_safetensors *f = em_safetensors_open(from);
    assert_nonnull_em(f);
    size_t n = em_safetensors_count(f), m = em_safetensors_meta_count(f), k = 0;
    const char **names = calloc(n + 2, sizeof *names);
    em_tensor **ts = calloc(n + 2, sizeof *ts);
    em_safetensors_meta *meta = calloc(m + 1, sizeof *meta);
    for (size_t i = 0; i < n; i++) {
        const char *name = em_safetensors_name(f, i);
        if (drop != NULL && strcmp(name, drop) == 0)
            continue;
        names[k] = name;
        ts[k++] = replace != NULL && strcmp(name, replace) == 0 ? with : em_safetensors_tensor(f, i);
    }
    if (replace != NULL && em_safetensors_find(f, replace) < 0)
        names[k] = replace, ts[k++] = with;
    for (size_t i = 0; i < m; i++) {
        meta[i] = em_safetensors_meta_get(f, i);
        if (key != NULL && strcmp(meta[i].key, key) == 0)
            meta[i].value = value;
    }
    assert_ok(em_safetensors_write(to, names, ts, k, meta, m));
    free(names);
    free(ts);
    free(meta);
    em_safetensors_free(f);
}

/* A checkpoint is a file from elsewhere too: damaged optimizer parts are refused, nothing changes. */
static void test_checkpoint__damaged_optimizer_parts_refused(void **state)
{
    (void)state;
    em_scope_begin();
    em_nn *a = make_net(0);
    em_optimizer *oa = make_opt(ADAM, a, 0.01);
    train(a, oa, 0, 2);
    assert_ok(em_checkpoint_save(ckpt, a, &oa, 1, NULL, 0, NULL, 0));
    char bad[160];
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    em_nn *b = make_net(1);
    em_optimizer *ob = make_opt(ADAM, b, 0.7);
    float before[64] = {0}, after[64] = {0};
    weights(b, before, 64);
    struct {
        const char *what, *drop, *replace;
        em_tensor *with;
        const char *key, *value, *needle;
    } cases[] = {
        {"a state of the wrong shape", NULL, "optimizers.0.state.0.exp_avg", em_zeros(EM_SHAPE(1), NULL), NULL, NULL,
         "the \"exp_avg\" state of parameter 0 is [1], the parameter [8, 4]"},
        {"a state key missing", "optimizers.0.state.1.exp_avg_sq", NULL, NULL, NULL, NULL,
         "the state of parameter 1 lacks \"exp_avg_sq\""},
        {"a state of a parameter the optimizer lacks", NULL, "optimizers.0.state.9.exp_avg", em_zeros(EM_SHAPE(2), NULL),
         NULL, NULL, "unexpected tensor \"optimizers.0.state.9.exp_avg\""},
        {"a negative step", NULL, "optimizers.0.state.0.step", em_full(EM_SHAPE(1), -3, &(em_tensor_opts){.dtype = EM_I64}),
         NULL, NULL, "the step of parameter 0 is not one non-negative number"},
        {"a state key Adam has not", NULL, "optimizers.0.state.0.momentum_buffer", em_zeros(EM_SHAPE(8, 4), NULL),
         NULL, NULL, "has no state \"momentum_buffer\""},
        {"malformed optimizer metadata", NULL, NULL, NULL, "ember.optimizers", "[{\"name\":", "is not a JSON list"},
        {"a hyper-parameter missing", NULL, NULL, NULL, "ember.optimizers",
         "[{\"name\":\"Adam\",\"step_count\":2,\"param_groups\":[{\"shapes\":[[8,4],[8]],\"hparams\":{}},"
         "{\"shapes\":[[2,8],[2]],\"hparams\":{}}]}]",
         "hyper-parameter \"lr\" of group 0 of optimizer 0 is missing or not a number"},
        {"another version", NULL, NULL, NULL, "ember.checkpoint", "7", "checkpoint version \"7\""},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        rewrite(ckpt, bad, cases[c].drop, cases[c].replace, cases[c].with, cases[c].key, cases[c].value);
        em_status st = em_checkpoint_load(bad, b, &ob, 1, NULL, 0);
        if (st != EM_EINVAL || strstr(em_last_error(), cases[c].needle) == NULL)
            fail_msg("%s: got %s \"%s\", wanted EM_EINVAL with \"%s\"", cases[c].what, em_status_name(st),
                     em_last_error(), cases[c].needle);
        em_clear_error();
    }
    weights(b, after, 64);
    assert_memory_equal(before, after, sizeof before);
    assert_true(em_optimizer_lr(ob, 0) == 0.7);
    assert_int_equal(em_optimizer_step_count(ob), 0);
    remove(bad);
    em_optimizer_free(oa);
    em_optimizer_free(ob);
    em_nn_free(a);
    em_nn_free(b);
    em_scope_end();
}

static int setup_all(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/ember_ckpt_XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(ckpt, sizeof ckpt, "%s/c.safetensors", dir);
    return 0;
}

static int teardown_all(void **state)
{
    (void)state;
    remove(ckpt);
    return rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_checkpoint__resume_is_bit_exact_for_each_optimizer, helper_setup,
                                        helper_teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint__file_layout, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint__incompatible_setups_refused, helper_setup, helper_teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint__damaged_optimizer_parts_refused, helper_setup,
                                        helper_teardown),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
