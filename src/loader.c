/* loader.c: data loaders - the em_loader_ops protocol and the built-in in-memory tensor loader.
 *
 * torch: DataLoader(TensorDataset(*tensors), batch_size, shuffle, drop_last) with the default
 * sequential / random samplers, and utils/data/distributed.py (DistributedSampler) under DDP
 * (Lightning: trainer/connectors/data_connector.py, _get_distributed_sampler). Written on the public
 * tensor API only.
 */
#include <stdlib.h>
#include <string.h>

#include "backend.h" /* emi_fail */
#include "loader.h"

struct em_loader {
    uint32_t magic; /* EMI_HANDLE_LOADER while it lives (backend.h: the API armor) */
    const em_loader_ops *ops;
    void *state;
};

/* A constructor gives up after `emi_fail` recorded why: returns NULL, so that each check reads as
 * one statement, `return no_loader(emi_fail(...));`. */
static em_loader *no_loader(em_status recorded)
{
    (void)recorded;
    return NULL;
}

/* ---- the protocol --------------------------------------------------------------------------------- */

/* em_loader_new failed (`emi_fail` recorded why): the loader owns `state` from the call on, so it
 * frees it. Returns NULL. */
static em_loader *loader_new_failed(const em_loader_ops *ops, void *state, em_status recorded)
{
    if (ops != NULL && ops->destroy != NULL && state != NULL)
        ops->destroy(state);
    return no_loader(recorded);
}

em_loader *em_loader_new(const em_loader_ops *ops, void *state)
{
    if (ops == NULL || ops->num_batches == NULL || ops->get_batch == NULL)
        return loader_new_failed(ops, state, emi_fail(EM_EINVAL, "em_loader_new: ops, ops->num_batches "
                                                                 "and ops->get_batch are required"));
    if (ops->version < 1 || ops->version > EM_LOADER_OPS_VERSION)
        return loader_new_failed(ops, state, emi_fail(EM_EINVAL, "em_loader_new: ops->version is %d; "
                                                                 "set it to EM_LOADER_OPS_VERSION (%d)",
                                                      ops->version, EM_LOADER_OPS_VERSION));
    em_loader *l = calloc(1, sizeof *l);
    if (l == NULL)
        return loader_new_failed(ops, state, emi_fail(EM_ENOMEM, "em_loader_new: out of memory"));
    l->magic = EMI_HANDLE_LOADER;
    l->ops = ops;
    l->state = state;
    return l;
}

int64_t em_loader_num_batches(const em_loader *l)
{
    if (!emi_handle_ok(l, EMI_HANDLE_LOADER, __func__, "loader"))
        return -1;
    return l->ops->num_batches(l->state);
}

void em_loader_free(em_loader *l)
{
    if (!emi_handle_free_ok(__func__, l, EMI_HANDLE_LOADER, "loader"))
        return;
    if (l->ops->destroy != NULL)
        l->ops->destroy(l->state);
    emi_handle_retire(l);
}

/* A batch as get_batch left it: at most EM_BATCH_MAX_TENSORS tensors, none NULL; the batch size (dim 0
 * of the first tensor) filled in when the loader left it 0. `fn` names the caller in messages. */
static em_status batch_check(const char *fn, em_batch *b, int64_t index)
{
    if (b->n > EM_BATCH_MAX_TENSORS)
        return emi_fail(EM_EINVAL, "%s: the loader returned a batch of %zu tensors (batch %lld); a batch holds at most "
                                   "EM_BATCH_MAX_TENSORS (%d)", fn, b->n, (long long)index, EM_BATCH_MAX_TENSORS);
    for (size_t i = 0; i < b->n; i++)
        if (b->t[i] == NULL)
            return emi_fail(EM_EINVAL, "%s: the loader returned a batch whose tensor %zu is NULL (batch %lld)", fn, i,
                            (long long)index);
    if (b->size == 0 && b->n > 0 && em_tensor_dim(b->t[0]) > 0)
        b->size = em_tensor_size(b->t[0], 0);
    return EM_OK;
}

em_status em_loader_get(em_loader *l, int64_t epoch, int64_t index, em_batch *out)
{
    if (l == NULL || out == NULL)
        return emi_fail(EM_EINVAL, "em_loader_get: NULL argument");
    if (!emi_handle_live(l, EMI_HANDLE_LOADER))
        return emi_handle_bad(__func__, 1, l, "loader");
    int64_t n = l->ops->num_batches(l->state);
    if (index < 0 || index >= n)
        return emi_fail(EM_EINVAL, "em_loader_get: batch %lld out of range (the loader has %lld)",
                        (long long)index, (long long)n);
    if (l->ops->set_epoch != NULL)
        l->ops->set_epoch(l->state, epoch);
    memset(out, 0, sizeof *out);
    em_status s = l->ops->get_batch(l->state, index, out);
    if (s != EM_OK)
        return emi_has_error() ? s : emi_fail(s, "em_loader_get: the loader failed on batch %lld", (long long)index);
    return batch_check("em_loader_get", out, index);
}

/* ---- torch's DistributedSampler ------------------------------------------------------------------- */

/* torch.randperm(n, generator=torch.Generator().manual_seed(seed)) into out[0..n-1]. */
static em_status seeded_permutation(int64_t n, uint64_t seed, int64_t *out)
{
    em_generator *g = em_generator_new(seed);
    if (g == NULL)
        return em_last_status();
    em_tensor *p = em_randperm(n, &(em_tensor_opts){.dtype = EM_I64, .generator = g});
    em_generator_free(g);
    if (p == NULL)
        return em_last_status();
    p = emi_own(p);
    em_status s = em_tensor_copy_to(p, out, (size_t)n * sizeof *out, EM_I64);
    em_tensor_free(p);
    return s;
}

int64_t em_distributed_sampler_indices(int64_t n, int64_t world_size, int64_t rank, bool shuffle, uint64_t seed,
                                       int64_t epoch, bool drop_last, int64_t *out, int64_t cap)
{
    if (n < 0 || world_size < 1 || rank < 0 || rank >= world_size) {
        emi_fail(EM_EINVAL, "em_distributed_sampler_indices: n %lld, world_size %lld, rank %lld: n must be >= 0, "
                            "world_size >= 1 and rank in [0, world_size)", (long long)n, (long long)world_size,
                 (long long)rank);
        return -1;
    }
    if (cap > 0 && out == NULL) {
        emi_fail(EM_EINVAL, "em_distributed_sampler_indices: out is NULL");
        return -1;
    }
    /* num_samples: ceil((n - W) / W) when dropping a ragged tail, else ceil(n / W) */
    int64_t num;
    if (drop_last && n % world_size != 0)
        num = n >= world_size ? (n - world_size + world_size - 1) / world_size : 0;
    else
        num = n / world_size + (n % world_size != 0);
    int64_t total = num * world_size;
    if (cap <= 0 || num == 0)
        return num;
    int64_t *base = NULL;
    if (shuffle) {
        if ((base = malloc((size_t)n * sizeof *base)) == NULL) {
            emi_fail(EM_ENOMEM, "em_distributed_sampler_indices: out of memory");
            return -1;
        }
        if (seeded_permutation(n, seed + (uint64_t)epoch, base) != EM_OK) {
            free(base);
            return -1;
        }
    }
    /* the padded (or truncated) list is base[i % n] for i < total; this rank takes i = rank + k * W */
    for (int64_t k = 0; k < num && k < cap; k++) {
        int64_t i = (rank + k * world_size) % n;
        out[k] = base != NULL ? base[i] : i;
    }
    (void)total;
    free(base);
    return num;
}

void emi_loader_set_epoch(em_loader *l, int64_t epoch)
{
    if (l->ops->set_epoch != NULL)
        l->ops->set_epoch(l->state, epoch);
}

em_status emi_loader_fetch(em_loader *l, int64_t index, em_batch *out)
{
    memset(out, 0, sizeof *out);
    em_status s = l->ops->get_batch(l->state, index, out);
    if (s == EM_OK && !emi_has_error() && out->n == 0)
        s = emi_fail(EM_EINVAL, "the loader returned a batch without tensors (batch %lld)", (long long)index);
    if (s == EM_OK && emi_has_error())
        s = em_last_status();
    if (s == EM_OK)
        s = batch_check("train_dataloader", out, index);
    return s;
}

/* ---- the in-memory tensor loader ------------------------------------------------------------------- */

typedef struct tensor_loader {
    em_tensor *t[EM_BATCH_MAX_TENSORS]; /* caller-owned references (no scope) */
    size_t n;
    int64_t rows;
    em_loader_opts opts;
    int64_t epoch;
    em_tensor *perm;      /* int64 permutation of the current epoch (shuffle), or this rank's indices */
    int64_t perm_epoch;
    int64_t dist_rank, dist_world; /* under DDP with the distributed sampler: world > 1 */
    bool dist_shuffle;             /* the sampler's shuffle: always for training (Lightning's) */
    uint64_t dist_seed;            /* the sampler's seed: the trainer's seed, else 0 (PL_GLOBAL_SEED) */
} tensor_loader;

/* The samples one epoch yields: all rows, or this rank's DistributedSampler share. */
static int64_t tl_samples(const tensor_loader *tl)
{
    if (tl->dist_world <= 1)
        return tl->rows;
    return em_distributed_sampler_indices(tl->rows, tl->dist_world, tl->dist_rank, false, 0, 0, false, NULL, 0);
}

static int64_t tl_num_batches(void *state)
{
    tensor_loader *tl = state;
    int64_t bs = tl->opts.batch_size, rows = tl_samples(tl);
    return rows / bs + (!tl->opts.drop_last && rows % bs != 0); /* no rows + bs overflow */
}

static void tl_set_epoch(void *state, int64_t epoch)
{
    ((tensor_loader *)state)->epoch = epoch;
}

/* A new permutation per epoch, from a generator seeded with (seed, epoch): reproducible and independent
 * of the global generator, like DistributedSampler's seed + epoch. */
static em_status tl_permutation(tensor_loader *tl)
{
    if (tl->perm != NULL && tl->perm_epoch == tl->epoch)
        return EM_OK;
    em_tensor_free(tl->perm);
    tl->perm = NULL;
    if (tl->dist_world > 1) { /* DistributedSampler(shuffle, seed, drop_last=False), as Lightning injects it */
        int64_t n = tl_samples(tl);
        int64_t *idx = malloc((size_t)(n > 0 ? n : 1) * sizeof *idx);
        if (idx == NULL)
            return emi_fail(EM_ENOMEM, "the tensor loader: out of memory");
        if (em_distributed_sampler_indices(tl->rows, tl->dist_world, tl->dist_rank, tl->dist_shuffle, tl->dist_seed,
                                           tl->epoch, false, idx, n) < 0) {
            free(idx);
            return em_last_status();
        }
        em_tensor *p = em_tensor_from(idx, EM_I64, &n, 1, NULL);
        free(idx);
        if (p == NULL)
            return em_last_status();
        tl->perm = emi_own(p);
        tl->perm_epoch = tl->epoch;
        return EM_OK;
    }
    em_generator *g = em_generator_new(tl->opts.seed + (uint64_t)tl->epoch);
    if (g == NULL)
        return em_last_status();
    em_tensor *p = em_randperm(tl->rows, &(em_tensor_opts){.generator = g});
    em_generator_free(g);
    if (p == NULL)
        return em_last_status();
    tl->perm = emi_own(p); /* the loader owns it, not the scope that happens to be open */
    tl->perm_epoch = tl->epoch;
    return EM_OK;
}

static em_status tl_get_batch(void *state, int64_t index, em_batch *out)
{
    tensor_loader *tl = state;
    int64_t bs = tl->opts.batch_size;
    int64_t start = index * bs, rows = tl_samples(tl);
    int64_t len = rows - start < bs ? rows - start : bs;
    em_tensor *idx = NULL;
    if (tl->opts.shuffle || tl->dist_world > 1) {
        em_status s = tl_permutation(tl);
        if (s != EM_OK)
            return s;
        idx = em_narrow(tl->perm, 0, start, len);
    }
    out->n = tl->n;
    for (size_t i = 0; i < tl->n; i++) {
        out->t[i] = idx != NULL ? em_index_select(tl->t[i], 0, idx) : em_narrow(tl->t[i], 0, start, len);
        if (out->t[i] == NULL)
            return em_last_status() != EM_OK ? em_last_status() : EM_ERROR;
    }
    out->size = len;
    return EM_OK;
}

static void tl_destroy(void *state)
{
    tensor_loader *tl = state;
    for (size_t i = 0; i < tl->n; i++)
        em_tensor_free(tl->t[i]);
    em_tensor_free(tl->perm);
    free(tl);
}

static const em_loader_ops tensor_loader_ops = {
    .version = EM_LOADER_OPS_VERSION,
    .num_batches = tl_num_batches,
    .get_batch = tl_get_batch,
    .set_epoch = tl_set_epoch,
    .destroy = tl_destroy,
};

/* A handle owned by the caller (not by any open scope). */
static em_tensor *owned_ref(const em_tensor *t)
{
    return emi_own(em_tensor_ref(t));
}

em_loader *em_tensor_loader(em_tensor *const *tensors, size_t n, const em_loader_opts *opts)
{
    if (tensors == NULL || n == 0 || n > EM_BATCH_MAX_TENSORS)
        return no_loader(emi_fail(EM_EINVAL, "em_tensor_loader: give 1 to %d tensors (got %zu)",
                                  EM_BATCH_MAX_TENSORS, n));
    em_loader_opts o = opts != NULL ? *opts : (em_loader_opts){0};
    if (o.batch_size == 0)
        o.batch_size = 1;
    if (o.batch_size < 0)
        return no_loader(emi_fail(EM_EINVAL, "em_tensor_loader: batch_size must be positive (got %lld)",
                                  (long long)o.batch_size));
    int64_t rows = -1;
    for (size_t i = 0; i < n; i++) {
        if (tensors[i] == NULL) /* a failed constructor's message, if any, stays */
            return emi_has_error() ? NULL
                                   : no_loader(emi_fail(EM_EINVAL, "em_tensor_loader: tensor %zu is NULL", i));
        if (em_tensor_dim(tensors[i]) < 1)
            return no_loader(emi_fail(EM_EINVAL, "em_tensor_loader: tensor %zu is 0-dim; batches are "
                                                 "slices of dim 0", i));
        int64_t r = em_tensor_size(tensors[i], 0);
        if (rows >= 0 && r != rows)
            return no_loader(emi_fail(EM_EINVAL, "em_tensor_loader: size mismatch between tensors: tensor "
                                                 "0 has %lld rows, tensor %zu has %lld",
                                      (long long)rows, i, (long long)r));
        rows = r;
    }
    tensor_loader *tl = calloc(1, sizeof *tl);
    if (tl == NULL)
        return no_loader(emi_fail(EM_ENOMEM, "em_tensor_loader: out of memory"));
    tl->n = n;
    tl->rows = rows;
    tl->opts = o;
    tl->perm_epoch = -1;
    tl->dist_world = 1;
    for (size_t i = 0; i < n; i++) {
        tl->t[i] = owned_ref(tensors[i]);
        if (tl->t[i] == NULL) {
            tl_destroy(tl);
            return NULL;
        }
    }
    return em_loader_new(&tensor_loader_ops, tl);
}

/* ---- DDP ----------------------------------------------------------------------------------------------- */

void emi_loader_set_distributed(em_loader *l, int64_t rank, int64_t world, bool use_sampler, bool train,
                                uint64_t seed)
{
    if (l->ops == &tensor_loader_ops) {
        tensor_loader *tl = l->state;
        tl->dist_rank = rank;
        tl->dist_world = use_sampler ? world : 1;
        tl->dist_shuffle = train || tl->opts.shuffle;
        tl->dist_seed = seed;
        em_tensor_free(tl->perm);
        tl->perm = NULL;
        tl->perm_epoch = -1;
    } else if (l->ops->version >= 2 && l->ops->set_distributed != NULL) {
        l->ops->set_distributed(l->state, rank, world);
    }
}
