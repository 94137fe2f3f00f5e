/* tester/report - report.json, report.md and report.html from result records.
 *
 * Case records are deduplicated by (model, suite, case id), the last one
 * winning, so a resumed run or a merge of shards counts each case once.
 * report.html is one self-contained file: inline CSS and SVG, no scripts,
 * fonts or styles from elsewhere. Its summary table has one
 * <tr class="model-row" data-model="NAME"> per model, and each model gets a
 * memory timeline <svg class="timeline" data-model="NAME">. */
#ifndef VLM_TESTER_REPORT_H
#define VLM_TESTER_REPORT_H

#include <cjson/cJSON.h>

#include "base/status.h"

/* The summary (what report.json holds) from an array of records. */
vlm_status tester_report_summary(const cJSON *records, cJSON **out, vlm_err *err);

/* Write dir/report.json, dir/report.md and dir/report.html. If summary_out
 * is not NULL it gets the summary (caller deletes it). */
vlm_status tester_report_write(const char *dir, const cJSON *records, cJSON **summary_out,
                               vlm_err *err);

#endif
