/* tester/score - scorers: parse a spec from a case, and judge an answer. */
#include "tester/score.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include "base/alloc.h"
#include "tester/strbuf.h"

static const char *const scorer_names[TESTER_SC_COUNT] = {
    "exact", "contains", "contains_all", "contains_any", "not_contains",
    "regex", "choice",   "number",       "yes_no",
};

const char *tester_scorer_name(tester_scorer s) {
    return (unsigned)s < TESTER_SC_COUNT ? scorer_names[s] : "?";
}

int tester_scorer_parse(const char *name) {
    for (int i = 0; i < TESTER_SC_COUNT; i++)
        if (name && strcmp(name, scorer_names[i]) == 0) return i;
    return -1;
}

/* ------------------------------------------------------------------------ */
/* normalisation                                                            */

char *tester_normalize(const char *s) {
    tsb b = {0};
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    bool pending_space = false;
    while (*p) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t n = utf8proc_iterate(p, -1, &cp);
        if (n <= 0) { /* not UTF-8: keep the byte as it is */
            tsb_putn(&b, (const char *)p, 1);
            p++;
            continue;
        }
        p += n;
        utf8proc_category_t c = utf8proc_category(cp);
        bool sep = isspace(cp < 128 ? cp : 'x') ||
                   (c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO) ||
                   (c >= UTF8PROC_CATEGORY_SM && c <= UTF8PROC_CATEGORY_SO) ||
                   (c >= UTF8PROC_CATEGORY_ZS && c <= UTF8PROC_CATEGORY_ZP) ||
                   c == UTF8PROC_CATEGORY_CC;
        if (sep) {
            pending_space = b.len > 0;
            continue;
        }
        if (pending_space) tsb_putn(&b, " ", 1);
        pending_space = false;
        utf8proc_uint8_t enc[4];
        utf8proc_ssize_t m = utf8proc_encode_char(utf8proc_tolower(cp), enc);
        tsb_putn(&b, (const char *)enc, (size_t)m);
    }
    return tsb_take(&b);
}

/* ------------------------------------------------------------------------ */
/* parsing a spec                                                           */

static vlm_status push_text(tester_score_spec *spec, const char *s, const char *where,
                            vlm_err *err) {
    const char **t = vlm_realloc(spec->texts, (spec->n_texts + 1) * sizeof *t, VLM_MEM_OTHER);
    if (!t) return vlm_err_set(err, VLM_ERR_NOMEM, "%s: out of memory", where);
    spec->texts = t;
    t[spec->n_texts++] = s;
    return VLM_OK;
}

/* expected as one string or an array of non-empty strings. */
static vlm_status parse_texts(const cJSON *exp, bool allow_array, bool allow_single,
                              const char *where, const char *scorer, tester_score_spec *spec,
                              vlm_err *err) {
    if (cJSON_IsString(exp) && allow_single) {
        if (!exp->valuestring[0])
            return vlm_err_set(err, VLM_ERR_FORMAT, "%s: scorer %s: \"expected\" is empty", where,
                               scorer);
        return push_text(spec, exp->valuestring, where, err);
    }
    if (cJSON_IsArray(exp) && allow_array) {
        const cJSON *it;
        cJSON_ArrayForEach(it, exp) {
            if (!cJSON_IsString(it) || !it->valuestring[0])
                return vlm_err_set(err, VLM_ERR_FORMAT,
                                   "%s: scorer %s: \"expected\" must hold non-empty strings", where,
                                   scorer);
            vlm_status st = push_text(spec, it->valuestring, where, err);
            if (st) return st;
        }
        if (spec->n_texts == 0)
            return vlm_err_set(err, VLM_ERR_FORMAT, "%s: scorer %s: \"expected\" is empty", where,
                               scorer);
        return VLM_OK;
    }
    return vlm_err_set(err, VLM_ERR_FORMAT, "%s: scorer %s: \"expected\" must be %s", where, scorer,
                       allow_array && allow_single ? "a string or an array of strings"
                       : allow_array               ? "an array of strings"
                                                   : "a string");
}

static vlm_status parse_choice(const cJSON *obj, const cJSON *exp, const char *where,
                               tester_score_spec *spec, vlm_err *err) {
    if (!cJSON_IsString(exp) || strlen(exp->valuestring) != 1 ||
        !isalpha((unsigned char)exp->valuestring[0]))
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: scorer choice: \"expected\" must be one letter such as \"B\"",
                           where);
    spec->n_letters = 4;
    const cJSON *opts = cJSON_GetObjectItemCaseSensitive(obj, "options");
    if (opts && !cJSON_IsNull(opts)) {
        int n = 0;
        const cJSON *it;
        if (cJSON_IsArray(opts)) {
            cJSON_ArrayForEach(it, opts) {
                if (!cJSON_IsString(it) || n >= TESTER_MAX_OPTIONS)
                    return vlm_err_set(err, VLM_ERR_FORMAT,
                                       "%s: scorer choice: \"options\" must be at most 26 strings",
                                       where);
                spec->options[n++] = it->valuestring;
            }
        } else if (cJSON_IsObject(opts)) {
            cJSON_ArrayForEach(it, opts) {
                const char *k = it->string;
                if (!cJSON_IsString(it) || !k || strlen(k) != 1 || !isalpha((unsigned char)k[0]))
                    return vlm_err_set(err, VLM_ERR_FORMAT,
                                       "%s: scorer choice: \"options\" keys must be letters and "
                                       "values strings",
                                       where);
                int i = toupper((unsigned char)k[0]) - 'A';
                spec->options[i] = it->valuestring;
                if (i + 1 > n) n = i + 1;
            }
        } else {
            return vlm_err_set(err, VLM_ERR_FORMAT,
                               "%s: scorer choice: \"options\" must be an array or an object",
                               where);
        }
        if (n < 2)
            return vlm_err_set(err, VLM_ERR_FORMAT,
                               "%s: scorer choice: \"options\" needs at least 2 entries", where);
        spec->n_letters = n;
    }
    int want = toupper((unsigned char)exp->valuestring[0]) - 'A';
    if (want >= spec->n_letters)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: scorer choice: expected letter %c is not among the %d options",
                           where, 'A' + want, spec->n_letters);
    return push_text(spec, exp->valuestring, where, err);
}

vlm_status tester_score_spec_parse(const cJSON *obj, const char *where, tester_score_spec *spec,
                                   vlm_err *err) {
    memset(spec, 0, sizeof *spec);
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(obj, "scorer");
    if (!sc) return vlm_err_set(err, VLM_ERR_FORMAT, "%s: missing \"scorer\"", where);
    if (!cJSON_IsString(sc))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: \"scorer\" must be a string", where);
    int kind = tester_scorer_parse(sc->valuestring);
    if (kind < 0)
        return vlm_err_set(err, VLM_ERR_FORMAT,
                           "%s: unknown scorer \"%s\" (known: exact, contains, contains_all, "
                           "contains_any, not_contains, regex, choice, number, yes_no)",
                           where, sc->valuestring);
    spec->kind = (tester_scorer)kind;
    const char *name = sc->valuestring;
    const cJSON *exp = cJSON_GetObjectItemCaseSensitive(obj, "expected");
    if (!exp || cJSON_IsNull(exp))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: scorer %s: missing \"expected\"", where, name);
    vlm_status st = VLM_OK;
    switch (spec->kind) {
    case TESTER_SC_EXACT:
    case TESTER_SC_NOT_CONTAINS:
        st = parse_texts(exp, true, true, where, name, spec, err);
        break;
    case TESTER_SC_CONTAINS:
        st = parse_texts(exp, false, true, where, name, spec, err);
        break;
    case TESTER_SC_CONTAINS_ALL:
    case TESTER_SC_CONTAINS_ANY:
        st = parse_texts(exp, true, false, where, name, spec, err);
        break;
    case TESTER_SC_REGEX: {
        st = parse_texts(exp, false, true, where, name, spec, err);
        if (st) break;
        int ec;
        PCRE2_SIZE off;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)spec->texts[0], PCRE2_ZERO_TERMINATED, PCRE2_UTF,
                                       &ec, &off, NULL);
        if (!re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(ec, msg, sizeof msg);
            st = vlm_err_set(err, VLM_ERR_FORMAT, "%s: scorer regex: bad pattern at offset %zu: %s",
                             where, (size_t)off, (const char *)msg);
            break;
        }
        spec->re = re;
        break;
    }
    case TESTER_SC_CHOICE:
        st = parse_choice(obj, exp, where, spec, err);
        break;
    case TESTER_SC_NUMBER: {
        if (!cJSON_IsNumber(exp)) {
            st = vlm_err_set(err, VLM_ERR_FORMAT,
                             "%s: scorer number: \"expected\" must be a number", where);
            break;
        }
        spec->number = exp->valuedouble;
        const cJSON *tol = cJSON_GetObjectItemCaseSensitive(obj, "tolerance");
        if (tol && !cJSON_IsNull(tol)) {
            if (!cJSON_IsNumber(tol) || tol->valuedouble < 0) {
                st = vlm_err_set(err, VLM_ERR_FORMAT,
                                 "%s: scorer number: \"tolerance\" must be a number >= 0", where);
                break;
            }
            spec->tolerance = tol->valuedouble;
        }
        break;
    }
    case TESTER_SC_YES_NO:
        if (cJSON_IsBool(exp)) {
            spec->yes = cJSON_IsTrue(exp);
        } else if (cJSON_IsString(exp) && (strcasecmp(exp->valuestring, "yes") == 0 ||
                                           strcasecmp(exp->valuestring, "no") == 0)) {
            spec->yes = strcasecmp(exp->valuestring, "yes") == 0;
        } else {
            st = vlm_err_set(err, VLM_ERR_FORMAT,
                             "%s: scorer yes_no: \"expected\" must be \"yes\", \"no\" or a bool",
                             where);
        }
        break;
    case TESTER_SC_COUNT:
        break;
    }
    if (st) tester_score_spec_free(spec);
    return st;
}

void tester_score_spec_free(tester_score_spec *spec) {
    vlm_free(spec->texts);
    if (spec->re) pcre2_code_free((pcre2_code *)spec->re);
    memset(spec, 0, sizeof *spec);
}

/* ------------------------------------------------------------------------ */
/* extraction                                                               */

static bool starts_with_ci(const char *s, const char *prefix) {
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

/* Does the text just before position i (in s) end with one of the phrases
 * that announce an answer letter? */
static bool announced(const char *s, size_t i) {
    static const char *const phrases[] = {"answer is ", "answer: ", "answer is: ",      "answer:",
                                          "option ",    "choice ",  "answer is option "};
    for (size_t k = 0; k < sizeof phrases / sizeof phrases[0]; k++) {
        size_t n = strlen(phrases[k]);
        if (i >= n && strncasecmp(s + i - n, phrases[k], n) == 0) return true;
    }
    return false;
}

char tester_choice_extract(const tester_score_spec *spec, const char *answer) {
    int n_letters = spec->n_letters > 0 ? spec->n_letters : 4;
    /* The whole answer is a letter, maybe with punctuation: "B", "(B)", "b." */
    {
        const char *p = answer;
        char only = 0;
        bool one = true;
        for (; *p; p++) {
            unsigned char c = (unsigned char)*p;
            if (isalnum(c)) {
                if (only) {
                    one = false;
                    break;
                }
                only = (char)toupper(c);
            }
        }
        if (one && only >= 'A' && only < 'A' + n_letters) return only;
    }
    size_t len = strlen(answer);
    char first_strong = 0;
    char found = 0;
    bool several = false;
    size_t start = 0;
    while (start < len && isspace((unsigned char)answer[start])) start++;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)answer[i];
        if (c < 'A' || c >= 'A' + n_letters) continue;
        bool left_ok = i == 0 || !isalnum((unsigned char)answer[i - 1]);
        bool right_ok = i + 1 == len || !isalnum((unsigned char)answer[i + 1]);
        if (!left_ok || !right_ok) continue;
        char next = i + 1 < len ? answer[i + 1] : '\0';
        char prev = i > 0 ? answer[i - 1] : '\0';
        bool strong = announced(answer, i);
        bool marked = prev == '(' || next == ')' || next == ':' ||
                      (next == '.' && (i + 2 >= len || isspace((unsigned char)answer[i + 2]))) ||
                      (i == start && (next == '\0' || next == ',' || next == '\n'));
        if (!strong && !marked) continue;
        if (strong && !first_strong) first_strong = (char)c;
        if (found && found != (char)c) several = true;
        if (!found) found = (char)c;
    }
    if (first_strong) return first_strong;
    if (several) return '?';
    if (found) return found;
    /* No letter: the one option whose text the answer contains. */
    char *na = tester_normalize(answer);
    if (!na) return 0;
    char hit = 0;
    for (int i = 0; i < n_letters; i++) {
        if (!spec->options[i]) continue;
        char *no = tester_normalize(spec->options[i]);
        if (!no) continue;
        if (no[0] && strstr(na, no)) hit = hit ? '?' : (char)('A' + i);
        vlm_free(no);
    }
    vlm_free(na);
    return hit;
}

static const char *const number_words[] = {
    "zero",     "one",     "two",     "three",     "four",     "five",     "six",
    "seven",    "eight",   "nine",    "ten",       "eleven",   "twelve",   "thirteen",
    "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
};

bool tester_number_extract(const char *answer, double *out) {
    size_t len = strlen(answer);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)answer[i];
        bool boundary = i == 0 || !isalnum((unsigned char)answer[i - 1]);
        if (isdigit(c) || ((c == '-' || c == '.') && i + 1 < len &&
                           isdigit((unsigned char)answer[i + 1]) && boundary)) {
            /* Copy digits, one '.', and ',' between digit groups ("1,234"). */
            char buf[64];
            size_t n = 0;
            size_t j = i;
            if (answer[j] == '-') buf[n++] = answer[j++];
            bool dot = false;
            while (j < len && n + 1 < sizeof buf) {
                char d = answer[j];
                if (isdigit((unsigned char)d)) {
                    buf[n++] = d;
                } else if (d == '.' && !dot && j + 1 < len &&
                           isdigit((unsigned char)answer[j + 1])) {
                    dot = true;
                    buf[n++] = d;
                } else if (d == ',' && !dot && j + 3 < len + 0 &&
                           isdigit((unsigned char)answer[j + 1]) &&
                           isdigit((unsigned char)answer[j + 2]) &&
                           isdigit((unsigned char)answer[j + 3]) &&
                           (j + 4 >= len || !isdigit((unsigned char)answer[j + 4]))) {
                    /* thousands separator: skip it */
                } else {
                    break;
                }
                j++;
            }
            buf[n] = '\0';
            *out = strtod(buf, NULL);
            return true;
        }
        if (isalpha(c) && boundary) {
            for (size_t w = sizeof number_words / sizeof number_words[0]; w-- > 0;) {
                size_t wl = strlen(number_words[w]);
                if (starts_with_ci(answer + i, number_words[w]) &&
                    (i + wl == len || !isalnum((unsigned char)answer[i + wl]))) {
                    *out = (double)w;
                    return true;
                }
            }
        }
    }
    return false;
}

/* Whole-word occurrence of w in a normalised string. */
static bool has_word(const char *norm, const char *w) {
    size_t wl = strlen(w);
    for (const char *p = strstr(norm, w); p; p = strstr(p + 1, w)) {
        bool l = p == norm || p[-1] == ' ';
        bool r = p[wl] == '\0' || p[wl] == ' ';
        if (l && r) return true;
    }
    return false;
}

/* ------------------------------------------------------------------------ */
/* scoring                                                                  */

static vlm_status contains_norm(const char *na, const char *text, bool *out, vlm_err *err) {
    char *nt = tester_normalize(text);
    if (!nt) return vlm_err_set(err, VLM_ERR_NOMEM, "scorer: out of memory");
    *out = strstr(na, nt) != NULL;
    vlm_free(nt);
    return VLM_OK;
}

vlm_status tester_score(const tester_score_spec *spec, const char *answer, bool *passed, char *why,
                        size_t why_size, vlm_err *err) {
    char dummy[8];
    if (!why) {
        why = dummy;
        why_size = sizeof dummy;
    }
    why[0] = '\0';
    *passed = false;
    if (!answer) answer = "";
    if (spec->kind == TESTER_SC_REGEX) {
        pcre2_match_data *md =
            pcre2_match_data_create_from_pattern((const pcre2_code *)spec->re, NULL);
        if (!md) return vlm_err_set(err, VLM_ERR_NOMEM, "scorer regex: out of memory");
        int rc = pcre2_match((const pcre2_code *)spec->re, (PCRE2_SPTR)answer,
                             PCRE2_ZERO_TERMINATED, 0, 0, md, NULL);
        pcre2_match_data_free(md);
        *passed = rc >= 0;
        if (!*passed) snprintf(why, why_size, "no match for /%s/", spec->texts[0]);
        return VLM_OK;
    }
    if (spec->kind == TESTER_SC_CHOICE) {
        char got = tester_choice_extract(spec, answer);
        char want = (char)toupper((unsigned char)spec->texts[0][0]);
        *passed = got == want;
        if (!*passed) {
            if (got == 0)
                snprintf(why, why_size, "no option letter found, expected %c", want);
            else if (got == '?')
                snprintf(why, why_size, "several options named, expected %c", want);
            else
                snprintf(why, why_size, "found %c, expected %c", got, want);
        }
        return VLM_OK;
    }
    if (spec->kind == TESTER_SC_NUMBER) {
        double v;
        if (!tester_number_extract(answer, &v)) {
            snprintf(why, why_size, "no number found, expected %g", spec->number);
            return VLM_OK;
        }
        *passed = fabs(v - spec->number) <= spec->tolerance;
        if (!*passed) snprintf(why, why_size, "found %g, expected %g", v, spec->number);
        return VLM_OK;
    }
    char *na = tester_normalize(answer);
    if (!na) return vlm_err_set(err, VLM_ERR_NOMEM, "scorer: out of memory");
    vlm_status st = VLM_OK;
    bool hit = false;
    switch (spec->kind) {
    case TESTER_SC_EXACT:
        for (size_t i = 0; i < spec->n_texts && !*passed; i++) {
            char *nt = tester_normalize(spec->texts[i]);
            if (!nt) {
                st = vlm_err_set(err, VLM_ERR_NOMEM, "scorer: out of memory");
                break;
            }
            *passed = strcmp(na, nt) == 0;
            vlm_free(nt);
        }
        if (!st && !*passed) snprintf(why, why_size, "not equal to \"%s\"", spec->texts[0]);
        break;
    case TESTER_SC_CONTAINS:
    case TESTER_SC_CONTAINS_ALL:
        *passed = true;
        for (size_t i = 0; i < spec->n_texts && !st; i++) {
            st = contains_norm(na, spec->texts[i], &hit, err);
            if (!st && !hit) {
                *passed = false;
                snprintf(why, why_size, "missing \"%s\"", spec->texts[i]);
                break;
            }
        }
        break;
    case TESTER_SC_CONTAINS_ANY:
        for (size_t i = 0; i < spec->n_texts && !st && !*passed; i++) {
            st = contains_norm(na, spec->texts[i], &hit, err);
            if (!st && hit) *passed = true;
        }
        if (!st && !*passed) snprintf(why, why_size, "none of the %zu expected", spec->n_texts);
        break;
    case TESTER_SC_NOT_CONTAINS:
        *passed = true;
        for (size_t i = 0; i < spec->n_texts && !st; i++) {
            st = contains_norm(na, spec->texts[i], &hit, err);
            if (!st && hit) {
                *passed = false;
                snprintf(why, why_size, "contains \"%s\"", spec->texts[i]);
                break;
            }
        }
        break;
    case TESTER_SC_YES_NO: {
        int got = -1; /* 1 yes, 0 no */
        if (strncmp(na, "yes", 3) == 0 && (na[3] == '\0' || na[3] == ' '))
            got = 1;
        else if (strncmp(na, "no", 2) == 0 && (na[2] == '\0' || na[2] == ' '))
            got = 0;
        else {
            bool y = has_word(na, "yes"), n = has_word(na, "no");
            if (y != n) got = y ? 1 : 0;
        }
        *passed = got == (spec->yes ? 1 : 0);
        if (!*passed)
            snprintf(why, why_size, "%s, expected %s",
                     got < 0 ? "no clear yes or no"
                     : got   ? "said yes"
                             : "said no",
                     spec->yes ? "yes" : "no");
        break;
    }
    default:
        break;
    }
    vlm_free(na);
    return st;
}
