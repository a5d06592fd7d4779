/*
 * ember/io.h: weights in the safetensors format, and a hostile-file-safe reader for it.
 *
 * How to use this header
 * ----------------------
 * Save a layer's parameters and buffers under torch's names ("G.0.weight", "1.running_mean"):
 *
 *     em_nn_save_safetensors(net, "net.safetensors", NULL, 0);
 *
 * and load them back into a layer built the same way (in C, or in Python:
 * `net.load_state_dict(safetensors.torch.load_file("net.safetensors"))`):
 *
 *     if (em_nn_load_safetensors(net, "net.safetensors", true) != EM_OK)
 *         fprintf(stderr, "%s\n", em_last_error());
 *
 * The format is huggingface's (https://huggingface.co/docs/safetensors): 8 bytes N (unsigned,
 * little-endian), N bytes of UTF-8 JSON {"NAME": {"dtype": "F32", "shape": [2, 3],
 * "data_offsets": [BEGIN, END]}, ..., "__metadata__": {"key": "value", ...}} padded with spaces to
 * a multiple of 8, then the raw little-endian, row-major data. ember writes exactly what the
 * reference writer writes: tensors sorted by dtype (widest first, in the reference's dtype order)
 * then by name, packed without gaps, __metadata__ first in the header.
 *
 * Hostile files. The reader trusts nothing in a file: it never reads outside the file, never
 * crashes, and allocates at most a small constant times the file's size (the header, at most
 * 100,000,000 bytes as in the reference, is read whole; each tensor's bytes only when asked for).
 * A file is refused, with a message naming the file, the tensor and the rule, when: it is shorter
 * than 8 bytes; the header length runs past the end of the file or exceeds the limit; the header is
 * not valid UTF-8, contains control characters, or is not one JSON object; a tensor entry lacks
 * dtype/shape/data_offsets or has the wrong JSON types; a dtype is not one of the format's
 * (BOOL U8 I8 F8_E5M2 F8_E4M3 I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64); a shape has a negative,
 * fractional or huge dimension, more than EM_MAX_DIMS dimensions, or a byte size that overflows;
 * data_offsets are not two integers BEGIN <= END inside the data section; END - BEGIN differs from
 * the shape's byte size; two tensors overlap, leave a gap, or do not cover the data section up to
 * the end of the file; a name is empty or appears twice; __metadata__ is not an object of strings.
 * Dtypes of the format that ember has no tensor type for (I8, I16, U16, U32, U64, F8_*) are
 * accepted by the reader (their bytes are validated like any other) and refused only when such a
 * tensor is materialised or loaded.
 *
 * Errors follow ember/common.h: malformed contents are EM_EINVAL, an unreadable or unwritable file
 * EM_EIO (with the path and the system's errno text), memory EM_ENOMEM.
 */
#ifndef EMBER_IO_H
#define EMBER_IO_H

#include "nn.h"
#include "optim.h"
#include "scheduler.h"

EM_BEGIN_DECLS

/** The largest safetensors header ember reads, in bytes (the reference implementation's limit). */
#define EM_SAFETENSORS_MAX_HEADER 100000000u

/** One entry of a file's __metadata__ (string to string). */
typedef struct em_safetensors_meta {
    const char *key;
    const char *value;
} em_safetensors_meta;

/* ---- writing ---------------------------------------------------------------------------------- */

/**
 * Write tensors[0..n-1] under names[0..n-1], and meta[0..n_meta-1] as __metadata__ (none when
 * n_meta is 0), to `path` as safetensors. Each tensor is written in its own dtype, from any device
 * (copied to the CPU). The file is written atomically: into a temporary file in the same directory,
 * flushed to disk (fsync), renamed over `path`, and the directory synced; a failure at any point
 * leaves any previous file at `path` unchanged and no temporary file behind.
 * Errors: EM_EINVAL for NULL arguments, an empty, duplicate or non-UTF-8 name or metadata string, a
 * name "__metadata__", duplicate metadata keys; EM_EIO with the path and errno text when the file
 * cannot be written (directory missing or unwritable, disk full).
 */
EM_API em_status em_safetensors_write(const char *path, const char *const *names, em_tensor *const *tensors,
                                      size_t n, const em_safetensors_meta *meta, size_t n_meta);

/**
 * Save every parameter and buffer of `m` (torch's state_dict(): parameters and buffers under their
 * dotted names) to `path` with em_safetensors_write, in their own dtypes. `meta` as there.
 * Errors: as em_safetensors_write; EM_EINVAL for a NULL layer.
 */
EM_API em_status em_nn_save_safetensors(const em_nn *m, const char *path, const em_safetensors_meta *meta,
                                        size_t n_meta);

/* ---- reading ---------------------------------------------------------------------------------- */

/** An opened, validated safetensors file (or buffer). */
typedef struct em_safetensors em_safetensors;

/**
 * Open `path` and validate its header and layout (see "Hostile files" above); tensor bytes are read
 * later, when asked for. The file stays open until em_safetensors_free(). The caller frees the
 * result with em_safetensors_free().
 * Errors: NULL, with "em_safetensors_open: PATH: <what is wrong>" recorded (EM_EIO when it cannot
 * be read, EM_EINVAL when it is malformed, EM_ENOMEM).
 */
EM_API em_safetensors *em_safetensors_open(const char *path);

/**
 * Validate `size` bytes at `bytes` as a whole safetensors file. The buffer is borrowed: it must
 * stay unchanged until em_safetensors_free(). The caller frees the result with
 * em_safetensors_free(). Errors: NULL, as em_safetensors_open ("em_safetensors_parse: ...").
 */
EM_API em_safetensors *em_safetensors_parse(const void *bytes, size_t size);

/**
 * Free a reader (and close its file). NULL is ignored.
 * Misuse (best effort, common.h): freeing it twice, or passing it to any function of this header after,
 * records EM_EMISUSE and does nothing (the getters answer as for NULL).
 */
EM_API void em_safetensors_free(em_safetensors *f);

/** Number of tensors in the file; 0 for NULL. */
EM_API size_t em_safetensors_count(const em_safetensors *f);

/** The i-th tensor's name, in the order of the data (by offset). Borrowed until the reader is freed; NULL out of range. */
EM_API const char *em_safetensors_name(const em_safetensors *f, size_t i);

/** The index of the tensor named `name`, or -1 when the file has none (nothing recorded). */
EM_API int64_t em_safetensors_find(const em_safetensors *f, const char *name);

/** The i-th tensor's dtype as the file spells it ("F32", "BF16", ...). Static string; NULL out of range. */
EM_API const char *em_safetensors_dtype(const em_safetensors *f, size_t i);

/**
 * Copy up to `max` sizes of the i-th tensor's shape into `shape`; returns its number of dimensions
 * (0 for a scalar), or -1 when i is out of range.
 */
EM_API int em_safetensors_shape(const em_safetensors *f, size_t i, int64_t *shape, int max);

/** Number of __metadata__ entries. */
EM_API size_t em_safetensors_meta_count(const em_safetensors *f);
/** The i-th __metadata__ entry (in the file's order); NULL key/value out of range. Borrowed as em_safetensors_name. */
EM_API em_safetensors_meta em_safetensors_meta_get(const em_safetensors *f, size_t i);
/** The __metadata__ value for `key`, or NULL when absent (nothing recorded). Borrowed. */
EM_API const char *em_safetensors_meta_find(const em_safetensors *f, const char *key);

/**
 * The i-th tensor as a new CPU tensor of the file's dtype (no gradient).
 * Owned by the open scope; with no scope open, the caller frees it with em_tensor_free().
 * Errors: NULL for i out of range; EM_EINVAL for a dtype ember has no type for (I8, U16, ...) or a
 * BOOL byte other than 0 or 1; EM_EIO when the file cannot be read (or changed since it was opened).
 */
EM_API em_tensor *em_safetensors_tensor(const em_safetensors *f, size_t i);

/* ---- loading into a layer ---------------------------------------------------------------------- */

/**
 * Load the tensors of `f` into the parameters and buffers of `m` with the same names, as torch's
 * m.load_state_dict(state, strict). Every shape must match exactly (also when not strict, as in
 * torch). Strict: a name of `m` missing from the file, or a name in the file that `m` does not
 * have, is an error too. Values are converted to the dtype and device of the layer's tensor (torch's
 * copy_, as load_state_dict does: F64 into a float32 parameter rounds; a float into an integer
 * buffer truncates). Nothing is changed when a check fails: every name is checked before the first
 * value is copied.
 * Errors: EM_EINVAL listing the missing, unexpected and mis-shaped names
 * ("em_nn_load_safetensors: PATH: Missing key(s): "0.bias". Unexpected key(s): "0.b". size mismatch
 * for "1.weight": the file has [4, 8], the layer [8, 4]."), a dtype ember cannot read, a bad BOOL
 * byte; EM_EIO when the file cannot be read.
 */
EM_API em_status em_nn_load_safetensors_from(em_nn *m, const em_safetensors *f, bool strict);

/** em_safetensors_open(path), em_nn_load_safetensors_from(m, file, strict), em_safetensors_free. */
EM_API em_status em_nn_load_safetensors(em_nn *m, const char *path, bool strict);

/* ---- checkpoints of a layer, its optimizers and schedulers (the trainer's: trainer.h) ---------------- */

/**
 * Save a checkpoint of `m`, opts[0..n_opts-1] and scheds[0..n_scheds-1] to `path`: one safetensors
 * file (written atomically,
 * as em_safetensors_write) holding the parameters and buffers as "model.<name>", each optimizer's
 * per-parameter state as "optimizers.<k>.state.<i>.<key>" (i numbers the parameters over all groups
 * in order, key is torch.optim's: "momentum_buffer", "step" (int64 here), "exp_avg", "exp_avg_sq",
 * "max_exp_avg_sq", "square_avg", "grad_avg", "sum"), and metadata: "ember.checkpoint" (the format
 * version, "1"), "ember.optimizers" (JSON: each optimizer's name, step count, and per group the
 * shapes of its parameters and every hyper-parameter), "ember.schedulers" (JSON: each scheduler's
 * name), then meta[0..n_meta-1] (keys must not start with "ember."); each scheduler's state
 * (torch's state_dict: counters, base_lrs, _last_lr, initial_lr, ReduceLROnPlateau's best and
 * counters, CosineAnnealingWarmRestarts' T_i and T_cur, SequentialLR's and ChainedScheduler's
 * children) as "schedulers.<k>.state", a float64 vector. Pass wrappers or the optimizers themselves.
 * LBFGS keeps lbfgs.py's state under parameter 0 ("optimizers.<k>.state.0.d", ".t", ".old_dirs.<j>",
 * ...); an optimizer written in C its ops' state_save bytes ("optimizers.<k>.state.0.c_state"), a
 * scheduler written in C its ops' state_save bytes inside its vector. The trainer's state (loop
 * progress, RNG, callbacks) is em_trainer_save_checkpoint's (trainer.h), which writes this format plus
 * its own part; em_checkpoint_load reads the layer, optimizer and scheduler parts of such a file too.
 * Errors: EM_EUNSUPPORTED for an optimizer written in C without state_save (em_optimizer_ops version 3)
 * or a scheduler written in C without state_save/state_load (em_scheduler_ops version 2), naming it;
 * EM_EINVAL for NULL arguments or a reserved metadata key; as em_safetensors_write.
 */
EM_API em_status em_checkpoint_save(const char *path, const em_nn *m, em_optimizer *const *opts, size_t n_opts,
                                    em_scheduler *const *scheds, size_t n_scheds, const em_safetensors_meta *meta,
                                    size_t n_meta);

/**
 * Restore a checkpoint em_checkpoint_save wrote into `m`, opts[0..n_opts-1] and scheds[0..n_scheds-1],
 * built as when it was saved (the schedulers with the same arguments): parameters and buffers
 * (strict), each optimizer's hyper-parameters, state and step count, each scheduler's state,
 * so that training continues bit for bit as it would have without the interruption. Everything is
 * checked before anything is changed.
 * Errors: EM_EINVAL, with the path and what differs, for a file that is not an ember checkpoint, or
 * from an incompatible setup: another number of optimizers or schedulers, another type ("optimizer 0 is
 * Adam in the checkpoint but SGD here"), other groups or parameter shapes, a layer with other names
 * or shapes (as em_nn_load_safetensors, strict), incomplete or malformed optimizer state;
 * EM_EUNSUPPORTED for C optimizers and schedulers without state ops; the reader's errors
 * (em_safetensors_open).
 */
EM_API em_status em_checkpoint_load(const char *path, em_nn *m, em_optimizer *const *opts, size_t n_opts,
                                    em_scheduler *const *scheds, size_t n_scheds);

EM_END_DECLS

#endif /* EMBER_IO_H */
