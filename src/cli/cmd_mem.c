/* vlmtest mem - a snapshot of memory as the engine sees it: the process, the
 * machine, the container, kernel pressure, and the accounted categories. */
#include "cli.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/gpu.h"
#include "base/alloc.h"
#include "base/json.h"
#include "mem/monitor.h"

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

static void row(const char *label, bool have, uint64_t bytes) {
    char b[32];
    if (have)
        printf("  %-22s %14s  (%llu)\n", label, cli_human_bytes(bytes, b, sizeof b),
               (unsigned long long)bytes);
    else
        printf("  %-22s %14s\n", label, "-");
}

static void print_table(const vlm_mem_snapshot *s) {
    printf("process\n");
    row("rss", s->proc.have, s->proc.rss_bytes);
    row("peak rss", s->proc.have, s->proc.hwm_bytes);
    printf("machine\n");
    row("total", s->sys.have, s->sys.total_bytes);
    row("available", s->sys.have, s->sys.available_bytes);
    row("swap used", s->sys.have, s->sys.swap_used_bytes);
    if (s->cgroup.version)
        printf("container (cgroup v%d: %s)\n", s->cgroup.version, s->cgroup.dir);
    else
        printf("container (no memory cgroup found)\n");
    row("limit", s->cgroup.version && s->cgroup.limit_bytes != VLM_MEM_NO_LIMIT,
        s->cgroup.limit_bytes);
    row("current", s->cgroup.have_current, s->cgroup.current_bytes);
    printf("  %-22s %14llu\n", "oom kills", (unsigned long long)s->cgroup.oom_kills);
    row("headroom", true, s->headroom_bytes);
    printf("pressure\n");
    printf("  %-22s %14s\n", "level", vlm_pressure_level_name(s->level));
    if (s->psi.have) {
        printf("  %-22s %13.2f%%\n", "some avg10", s->psi.some_avg10);
        printf("  %-22s %13.2f%%\n", "full avg10", s->psi.full_avg10);
    }
    row("threshold", s->threshold_bytes != 0, s->threshold_bytes);
    printf("  %-22s %14s\n", "over threshold", s->over_threshold ? "yes" : "no");
    printf("accounted (current / peak)\n");
    for (int c = 0; c < VLM_MEM_CAT_COUNT; c++) {
        char a[32], b[32];
        printf("  %-22s %14s / %s\n", vlm_mem_cat_name((vlm_mem_cat)c),
               cli_human_bytes(s->accounted.current[c], a, sizeof a),
               cli_human_bytes(s->accounted.peak[c], b, sizeof b));
    }
    char a[32], b[32];
    printf("  %-22s %14s / %s\n", "total", cli_human_bytes(s->accounted.total_current, a, sizeof a),
           cli_human_bytes(s->accounted.total_peak, b, sizeof b));
    row("mapped", true, s->accounted.mapped_current);
    printf("threads %d\n", s->threads);
    const vlm_gpu_mem *g = &s->gpu;
    if (!g->have) {
        printf("gpu none\n");
        return;
    }
    printf("gpu %s\n", g->name);
    row("total", true, g->total_bytes);
    row("free", true, g->free_bytes);
    row("used (all processes)", true, g->used_bytes);
    row("accounted", true, g->accounted_bytes);
    row("accounted peak", true, g->accounted_peak);
    row("this process (NVML)", g->have_process && g->process_found, g->process_bytes);
}

static int print_json(const vlm_mem_snapshot *s) {
    cJSON *j = vlm_mem_snapshot_to_json(s);
    char *text = j ? vlm_json_print(j) : NULL;
    cJSON_Delete(j);
    if (!text) {
        cli_error("mem", "out of memory while writing JSON");
        return CLI_FAIL;
    }
    printf("%s\n", text);
    vlm_free(text);
    return CLI_OK;
}

static int run(int argc, char **argv) {
    vlm_gpu_monitor_install();
    bool json = false;
    long watch_ms = 0, count = 0;
    const char *root = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--json") == 0) {
            json = true;
        } else if (strcmp(a, "--watch") == 0 && i + 1 < argc) {
            if (!cli_parse_int(argv[++i], 1, 3600000, &watch_ms)) {
                cli_error("mem", "--watch wants milliseconds in 1..3600000, not '%s'", argv[i]);
                return CLI_USAGE;
            }
        } else if (strcmp(a, "--count") == 0 && i + 1 < argc) {
            if (!cli_parse_int(argv[++i], 1, 1000000000, &count)) {
                cli_error("mem", "--count wants a positive number, not '%s'", argv[i]);
                return CLI_USAGE;
            }
        } else if (strcmp(a, "--threshold") == 0 && i + 1 < argc) {
            uint64_t t;
            if (!cli_parse_size(argv[++i], &t)) {
                cli_error("mem", "--threshold wants a size such as 12G, not '%s'", argv[i]);
                return CLI_USAGE;
            }
            vlm_mem_set_threshold(t);
        } else if (strcmp(a, "--root") == 0 && i + 1 < argc) {
            root = argv[++i];
        } else {
            cli_error("mem", "unknown argument '%s' (see vlmtest mem --help)", a);
            return CLI_USAGE;
        }
    }
    if (!watch_ms) count = 1;
    signal(SIGINT, on_sigint);
    for (long n = 0; !interrupted && (count == 0 || n < count); n++) {
        if (n > 0) {
            struct timespec ts = {watch_ms / 1000, (watch_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
            if (interrupted) break;
            if (!json) printf("\n");
        }
        vlm_mem_snapshot s;
        vlm_mem_snapshot_take(root, &s);
        if (json) {
            if (print_json(&s) != CLI_OK) return CLI_FAIL;
        } else {
            print_table(&s);
        }
        fflush(stdout);
    }
    return CLI_OK;
}

const struct cli_command cli_command_mem = {
    "mem",
    "show memory: process, machine, container, pressure, accounted bytes",
    run,
    "usage: vlmtest mem [--json] [--watch MS [--count N]] [--threshold SIZE] [--root DIR]\n"
    "\n"
    "Print a snapshot of memory as the engine sees it: the process's resident\n"
    "size and its peak, the machine's total and available memory and swap, the\n"
    "container's memory cgroup (limit, usage, OOM kills), kernel memory pressure\n"
    "(PSI avg10 as normal / elevated / critical), and the bytes the engine has\n"
    "accounted per category.\n"
    "\n"
    "  --json          one JSON object (one per line with --watch)\n"
    "  --watch MS      print a snapshot every MS milliseconds until Ctrl-C\n"
    "  --count N       with --watch: stop after N snapshots\n"
    "  --threshold S   usage threshold for over_threshold (default 12G or\n"
    "                  VLM_MEM_THRESHOLD)\n"
    "  --root DIR      read /proc and /sys under DIR (fixtures for tests)\n",
};
