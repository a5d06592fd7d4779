/* app.c: the smallest program a user of an installed ember writes. Built by run.sh against the
 * installed tree only (pkg-config, then find_package), never against the source tree. */
#include <ember.h>

#include <stdio.h>
#include <string.h>

int main(void)
{
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", EM_VERSION_MAJOR, EM_VERSION_MINOR, EM_VERSION_PATCH);
    if (strcmp(em_version(), want) != 0) {
        fprintf(stderr, "headers say %s, library says %s\n", want, em_version());
        return 1;
    }

    em_scope_begin();
    em_tensor *a = em_tensor_from_f32((const float[]){1, 2}, EM_SHAPE(2));
    em_tensor *b = em_tensor_from_f32((const float[]){3, 4}, EM_SHAPE(2));
    em_tensor *sum = em_add(a, b);
    float out[2] = {0, 0};
    em_status st = em_tensor_copy_to(sum, out, sizeof out, EM_F32); /* EM_EINVAL if sum is NULL */
    if (st != EM_OK) {
        fprintf(stderr, "failed: %s\n", em_last_error());
        em_scope_end();
        return 1;
    }
    em_scope_end();

    printf("ember %s (libtorch %s): [1, 2] + [3, 4] = [%g, %g]\n", em_version(), em_torch_version(),
           (double)out[0], (double)out[1]);
    return out[0] == 4.0f && out[1] == 6.0f ? 0 : 1;
}
