/* test_fuzz_safetensors.c: a bounded libFuzzer run of the safetensors reader (fuzz_safetensors.c)
 * from the seed corpus in tests/fuzz/corpus (real files ember and Python wrote). 20 seconds of
 * fuzzing (EMBER_FUZZ_SECONDS overrides), in a scratch corpus directory so the tree is not written;
 * a crash, a sanitizer report, a leak or a trap in the target fails the test and leaves the input
 * that did it in the scratch directory, whose path is printed. Skipped (77) with the reason where
 * clang or libFuzzer is missing. */
#define _POSIX_C_SOURCE 200809L
#include "helpers.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_fuzz__bounded_run_finds_nothing(void **state)
{
    (void)state;
    char dir[] = "/tmp/ember_fuzz_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char corpus[300], artifacts[300], log[300], time_arg[64];
    snprintf(corpus, sizeof corpus, "%s/corpus", dir);
    snprintf(artifacts, sizeof artifacts, "-artifact_prefix=%s/", dir);
    snprintf(log, sizeof log, "%s/fuzz.log", dir);
    const char *secs = getenv("EMBER_FUZZ_SECONDS");
    snprintf(time_arg, sizeof time_arg, "-max_total_time=%d", secs != NULL ? atoi(secs) : 20);
    assert_int_equal(mkdir(corpus, 0700), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (freopen(log, "w", stderr) == NULL)
            _exit(126);
        alarm(150); /* the run is bounded by -max_total_time; this bounds a hang */
        execl(EMBER_FUZZER, EMBER_FUZZER, time_arg, "-timeout=10", "-rss_limit_mb=2048", "-max_len=16384",
              "-print_final_stats=1", artifacts, corpus, EMBER_FUZZ_CORPUS, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    /* the last lines of libFuzzer's report */
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    char line[512];
    long runs = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "stat::", 6) == 0 || strstr(line, "ERROR") != NULL || strstr(line, "Done ") != NULL)
            printf("fuzz: %s", line);
        sscanf(line, "stat::number_of_executed_units: %ld", &runs);
    }
    fclose(f);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("the fuzzer %s %d; its log and the failing input are in %s",
                 WIFEXITED(status) ? "exited with" : "was killed by signal",
                 WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), dir);
    assert_true(runs > 0);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    if (EMBER_FUZZER[0] == '\0') {
        printf("SKIP test_fuzz_safetensors: %s\n", EMBER_FUZZ_SKIP);
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fuzz__bounded_run_finds_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
