/* ember-plot: draw every metric of a metrics.csv as curves in one PNG.
 *
 *     ember-plot lightning_logs/version_0/metrics.csv -o curves.png [--x epoch] [--title T] [--columns N]
 *
 * One panel per logged metric (every column but step and epoch) against the step (or the epoch), with
 * ticks, labels and the last / min / max value; empty cells (a row that logged other metrics) are
 * skipped. Installed with the library (bin/ember-plot); it reads any CSV in Lightning's CSVLogger layout.
 * Exit status: 0 drawn, 1 the file could not be read or drawn, 2 a usage error.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics_plot.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: ember-plot METRICS.csv [-o OUT.png] [--x step|epoch] [--title TEXT] [--columns N]\n"
               "Draws every metric of a metrics.csv (as ember's and Lightning's CSVLogger write it) as curves,\n"
               "one panel per metric, into a PNG.\n"
               "  -o, --output FILE   the PNG to write (default: curves.png)\n"
               "  -x, --x step|epoch  the x axis of every panel (default: step)\n"
               "  -t, --title TEXT    the title over the panels (default: the CSV's file name)\n"
               "  -c, --columns N     panels per row, 1..12 (default: 1, 2 or 3 by the number of metrics)\n"
               "  -h, --help          this text\n");
}

int main(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"output", required_argument, NULL, 'o'}, {"x", required_argument, NULL, 'x'},
        {"title", required_argument, NULL, 't'},  {"columns", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *out = "curves.png";
    metrics_plot_opts o = {0};
    int c;
    while ((c = getopt_long(argc, argv, "o:x:t:c:h", long_options, NULL)) != -1) {
        switch (c) {
        case 'o':
            out = optarg;
            break;
        case 'x':
            if (strcmp(optarg, "step") == 0) {
                o.x = METRICS_X_STEP;
            } else if (strcmp(optarg, "epoch") == 0) {
                o.x = METRICS_X_EPOCH;
            } else {
                fprintf(stderr, "ember-plot: --x takes step or epoch, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 't':
            o.title = optarg;
            break;
        case 'c': {
            char *end = NULL;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end != '\0' || v < 1 || v > 12) {
                fprintf(stderr, "ember-plot: --columns takes a number from 1 to 12, not '%s'\n", optarg);
                return 2;
            }
            o.columns = (int)v;
            break;
        }
        case 'h':
            usage(stdout);
            return 0;
        default: /* getopt_long printed what was wrong */
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "ember-plot: %s\n", optind >= argc ? "no METRICS.csv given" : "one METRICS.csv at a time");
        usage(stderr);
        return 2;
    }
    int n = metrics_plot(argv[optind], out, &o);
    if (n < 0) {
        fprintf(stderr, "ember-plot: %s\n", metrics_plot_error());
        return 1;
    }
    printf("ember-plot: %d metric%s from %s drawn into %s\n", n, n == 1 ? "" : "s", argv[optind], out);
    return 0;
}
