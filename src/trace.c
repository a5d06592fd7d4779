/* trace.c: the trace file - one JSON line per training_step call and per optimizer step, with the
 * learning rates in force (what the conformance runner compares with runs recorded from Lightning). */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "trace.h"

em_status emi_trace_open(em_trainer *t)
{
    if (t->trace_path == NULL)
        return EM_OK;
    t->trace = fopen(t->trace_path, "w");
    t->trace_errno = 0;
    if (t->trace == NULL)
        return emi_fail(EM_EIO, "cannot open trace_path \"%s\" for writing: %s", t->trace_path, strerror(errno));
    return EM_OK;
}

/* After a line: remember why the first failed write failed (disk full, ...), for emi_trace_close. */
static void trace_check(em_trainer *t)
{
    if (t->trace_errno == 0 && ferror(t->trace))
        t->trace_errno = errno != 0 ? errno : EIO;
}

em_status emi_trace_close(em_trainer *t)
{
    if (t->trace == NULL)
        return EM_OK;
    trace_check(t);
    if (fclose(t->trace) != 0 && t->trace_errno == 0)
        t->trace_errno = errno;
    t->trace = NULL;
    int e = t->trace_errno;
    t->trace_errno = 0;
    if (e != 0)
        return emi_fail(EM_EIO, "cannot write trace_path \"%s\": %s", t->trace_path, strerror(e));
    return EM_OK;
}

static void trace_lrs(em_trainer *t)
{
    fputs(",\"lr\":[", t->trace);
    for (size_t i = 0; i < t->setup.n_opts; i++) {
        fputs(i ? ",[" : "[", t->trace);
        size_t g = em_optimizer_num_groups(t->setup.opts[i]);
        for (size_t j = 0; j < g; j++)
            fprintf(t->trace, "%s%.17g", j ? "," : "", em_optimizer_lr(t->setup.opts[i], j));
        fputc(']', t->trace);
    }
    fputc(']', t->trace);
}

static void trace_number(FILE *f, const char *key, double v)
{
    if (isfinite(v))
        fprintf(f, ",\"%s\":%.9g", key, v);
    else
        fprintf(f, ",\"%s\":null", key);
}

void emi_trace_training_step(em_trainer *t, double loss)
{
    if (t->trace == NULL)
        return;
    fprintf(t->trace, "{\"event\":\"training_step\",\"epoch\":%lld,\"batch_idx\":%lld,\"global_step\":%lld",
            (long long)t->current_epoch, (long long)t->batch_idx, (long long)t->global_step);
    trace_number(t->trace, "loss", loss);
    trace_lrs(t);
    fputs("}\n", t->trace);
    trace_check(t);
}

void emi_trace_optimizer_step(em_trainer *t, int opt_index, double norm_before, double norm_after)
{
    if (t->trace == NULL)
        return;
    fprintf(t->trace, "{\"event\":\"optimizer_step\",\"optimizer\":%d,\"epoch\":%lld,\"batch_idx\":%lld,"
                      "\"global_step_before\":%lld,\"step_count\":%lld",
            opt_index, (long long)t->current_epoch, (long long)t->batch_idx, (long long)t->global_step,
            (long long)em_optimizer_step_count(t->setup.opts[opt_index]));
    trace_number(t->trace, "grad_norm_before_clip", norm_before);
    trace_number(t->trace, "grad_norm", norm_after);
    trace_lrs(t);
    fputs("}\n", t->trace);
    trace_check(t);
}
