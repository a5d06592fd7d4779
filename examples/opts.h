/* opts.h: the command-line helpers the example programs share.
 *
 * Each example parses its options with getopt_long (glibc's <getopt.h>) in its own parse_args; these
 * helpers do the two things every one of them needs the same way:
 *
 *   - strict numbers: the whole argument must be the number (strtol / strtoull / strtod with an
 *     end-pointer check, no leading blanks, no overflow), else a message names the option, and
 *   - one message for whatever getopt_long rejected (an unknown option, a missing value, a value
 *     given to a flag) and for a stray argument.
 *
 * Every message goes to stderr as "<prog>: ...", and the caller then exits with status 2.
 */
#ifndef EMBER_EXAMPLES_OPTS_H
#define EMBER_EXAMPLES_OPTS_H

#include <getopt.h>
#include <stdbool.h>

/* An integer >= lo filling the whole of s; on failure prints "<prog>: <opt> needs an integer >= lo". */
bool opts_long(const char *prog, const char *opt, const char *s, long lo, long *out);

/* An integer >= 0 (the full unsigned long long range), for seeds. */
bool opts_seed(const char *prog, const char *opt, const char *s, unsigned long long *out);

/* A finite number filling the whole of s; false without a message (the caller says which range). */
bool opts_number(const char *s, double *out);

/* A finite number > 0; on failure prints "<prog>: <opt> needs a number > 0". */
bool opts_positive(const char *prog, const char *opt, const char *s, double *out);

/* Call when getopt_long(argc, argv, ":...", longopts, NULL) returned '?' or ':' (optstring starting
 * with ':' and opterr = 0, so getopt_long itself prints nothing): prints why, naming the option. */
void opts_rejected(const char *prog, const struct option *longopts, char *const argv[], int c);

/* Call after the getopt_long loop: false, with a message, when an argument that is no option is
 * left (the examples take none). */
bool opts_no_operands(const char *prog, int argc, char *const argv[]);

#endif /* EMBER_EXAMPLES_OPTS_H */
