/* tester/score - deciding whether an answer passes.
 *
 * A scorer is named in a case (or a turn of a context case) by "scorer" and
 * reads "expected" plus a few scorer-specific keys:
 *
 *   exact        expected: string or [strings]; equal after normalisation
 *                (case folded, punctuation to spaces, whitespace collapsed)
 *   contains     expected: string; the normalised answer contains it
 *   contains_all expected: [strings]; contains every one
 *   contains_any expected: [strings]; contains at least one
 *   not_contains expected: string or [strings]; contains none
 *   regex        expected: PCRE2 pattern; matches somewhere in the raw answer
 *   choice       expected: a letter; "options": [texts] or {"A": text, ...}
 *                (optional). The letter is pulled out of a free answer
 *                ("(B)", "B.", "The answer is B"), else from the one option
 *                text the answer contains.
 *   number       expected: number; "tolerance" (absolute, default 0); the
 *                first number in the answer (digits or a word zero..twenty)
 *   yes_no       expected: "yes"/"no" or true/false
 *
 * Specs are parsed and checked (regex compiled) when a suite loads, so a bad
 * scorer is an error before any model is loaded. */
#ifndef VLM_TESTER_SCORE_H
#define VLM_TESTER_SCORE_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "base/status.h"

typedef enum tester_scorer {
    TESTER_SC_EXACT = 0,
    TESTER_SC_CONTAINS,
    TESTER_SC_CONTAINS_ALL,
    TESTER_SC_CONTAINS_ANY,
    TESTER_SC_NOT_CONTAINS,
    TESTER_SC_REGEX,
    TESTER_SC_CHOICE,
    TESTER_SC_NUMBER,
    TESTER_SC_YES_NO,
    TESTER_SC_COUNT
} tester_scorer;

#define TESTER_MAX_OPTIONS 26

typedef struct tester_score_spec {
    tester_scorer kind;
    const char **texts; /* expected strings (point into the suite's JSON) */
    size_t n_texts;
    const char *options[TESTER_MAX_OPTIONS]; /* choice: option text per letter, or NULL */
    int n_letters;                           /* choice: letters A.. that are valid */
    double number;                           /* number: expected value */
    double tolerance;                        /* number: absolute tolerance */
    bool yes;                                /* yes_no: expected answer */
    void *re;                                /* regex: compiled pcre2_code */
} tester_score_spec;

const char *tester_scorer_name(tester_scorer s);
/* -1 if unknown. */
int tester_scorer_parse(const char *name);

/* Parse "scorer", "expected" and the scorer's keys from obj. `where` names
 * the place for messages ("suites/x/cases.jsonl:12"). Strings keep pointing
 * into obj, which must outlive the spec. */
vlm_status tester_score_spec_parse(const cJSON *obj, const char *where, tester_score_spec *spec,
                                   vlm_err *err);
void tester_score_spec_free(tester_score_spec *spec);

/* Score an answer. *passed gets the verdict, why (may be NULL) a short reason
 * such as "found B, expected C". Fails only for lack of memory. */
vlm_status tester_score(const tester_score_spec *spec, const char *answer, bool *passed, char *why,
                        size_t why_size, vlm_err *err);

/* Normalise for comparisons: case folded, Unicode punctuation and symbols
 * to spaces, runs of whitespace to one space, trimmed. Returns an accounted
 * string (vlm_free) or NULL for lack of memory. */
char *tester_normalize(const char *s);

/* The choice letter found in a free answer ('A'..), or 0 for none and '?'
 * for several different ones. Exposed for tests. */
char tester_choice_extract(const tester_score_spec *spec, const char *answer);
/* The first number in the answer; false if none. */
bool tester_number_extract(const char *answer, double *out);

#endif
