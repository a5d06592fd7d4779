/* checkpointing.c: the checkpoint flags of classifier and gan (see checkpointing.h). */
#include "checkpointing.h"

#include "opts.h"

#include <stdio.h>
#include <string.h>

bool ckpt_parse(const char *prog, int c, const char *arg, ckpt_opts *o, bool *ok)
{
    const char *name, *what;
    switch (c) {
    case CKPT_OPT_EVERY:
        *ok = opts_long(prog, "--checkpoint-every", arg, 1, &o->every);
        return true;
    case CKPT_OPT_DIR:
        name = "--checkpoint-dir", what = "directory name";
        o->dir = arg;
        break;
    case CKPT_OPT_RESUME:
        name = "--resume", what = "checkpoint (or last)";
        o->resume = arg;
        break;
    case CKPT_OPT_SAVE_WEIGHTS:
        name = "--save-weights", what = "file name";
        o->save_weights = arg;
        break;
    default:
        return false;
    }
    *ok = arg[0] != '\0';
    if (!*ok)
        fprintf(stderr, "%s: %s needs a %s\n", prog, name, what);
    return true;
}

bool ckpt_check(const char *prog, const ckpt_opts *o)
{
    if (o->resume != NULL && strcmp(o->resume, "last") == 0 && o->dir == NULL) {
        fprintf(stderr, "%s: --resume last needs --checkpoint-dir (where the last checkpoint is)\n", prog);
        return false;
    }
    return true;
}

em_status ckpt_add_callback(em_trainer *t, const ckpt_opts *o)
{
    if (o->dir == NULL)
        return EM_OK;
    em_model_checkpoint_opts mo = EM_MODEL_CHECKPOINT_OPTS_INIT;
    mo.dirpath = o->dir;
    mo.every_n_train_steps = o->every;
    mo.save_top_k = 0;
    mo.save_last = true;
    em_callback *cb = em_model_checkpoint(&mo);
    if (cb == NULL)
        return em_last_status();
    return em_trainer_add_callback(t, cb);
}

void ckpt_print_resume(em_trainer *t, const ckpt_opts *o)
{
    const char *from = em_trainer_ckpt_path(t);
    if (from != NULL)
        printf("resumed from %s at epoch %lld, batch %lld, global_step %lld\n", from,
               (long long)em_trainer_current_epoch(t), (long long)em_trainer_batch_idx(t),
               (long long)em_trainer_global_step(t));
    else if (o->resume != NULL)
        printf("no last checkpoint in %s yet: training from the start\n", o->dir);
}

em_status ckpt_save_weights(const char *prog, const em_nn *net, const ckpt_opts *o)
{
    if (o->save_weights == NULL)
        return EM_OK;
    em_status s = em_nn_save_safetensors(net, o->save_weights, NULL, 0);
    if (s != EM_OK)
        fprintf(stderr, "%s: --save-weights: %s\n", prog, em_last_error());
    return s;
}
