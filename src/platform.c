/* platform.c: what ember can tell about the machine it runs on that changes its numbers.
 *
 * OpenBLAS 0.3.21 (Debian 12) picks its kernels at run time from the CPU model; on a model it does not
 * know it falls back to the generic "Prescott" kernels: matrix products several times slower and
 * rounded differently from the kernels PyTorch's recorded runs used. OPENBLAS_CORETYPE (read by
 * OpenBLAS when the process starts) names the kernels to use instead. ember asks OpenBLAS which
 * kernels it runs (openblas_get_corename, looked up at run time: libtorch may use another BLAS, then
 * nothing is said) and warns once per process through the log handler.
 */
#define _GNU_SOURCE /* RTLD_DEFAULT */

#include <dlfcn.h>
#include <stdatomic.h>
#include <string.h>
#include <strings.h>

#include "backend.h"
#include "builtin.h"

void emi_check_blas(void)
{
    static atomic_flag checked = ATOMIC_FLAG_INIT;
    if (atomic_flag_test_and_set(&checked))
        return;
    char *(*corename)(void) = NULL;
    void *sym = dlsym(RTLD_DEFAULT, "openblas_get_corename");
    memcpy(&corename, &sym, sizeof corename); /* object pointer -> function pointer, as POSIX allows */
    if (corename == NULL)
        return;
    const char *core = corename();
    if (core == NULL || (strcasecmp(core, "Prescott") != 0 && strncasecmp(core, "generic", 7) != 0))
        return;
    emi_warn("OpenBLAS runs its generic %s kernels on this CPU: matrix products are several times slower and "
             "round differently from the kernels Lightning's reference runs used. If the CPU supports them, set "
             "OPENBLAS_CORETYPE before the program starts (e.g. OPENBLAS_CORETYPE=Haswell, or SkylakeX with "
             "AVX-512).", core);
}
