/* text/tok_internal - the pieces of the tokenizer shared by its files.
 *
 * Text moves through the pipeline as a `nbuf`: UTF-8 bytes plus, for every
 * byte, the offset of the input byte it came from (HF's alignments, reduced
 * to what the Metaspace "first" prepend scheme needs). Splits are `piece`s
 * (byte ranges of one nbuf). */
#ifndef VLM_TEXT_TOK_INTERNAL_H
#define VLM_TEXT_TOK_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "text/tokenizer.h"

#define TOK_MAX_ID (1 << 24) /* ids at or above are refused at load */

/* ---- unicode helpers (tok_unicode.c) ---- */
/* Decode one code point at s[0..n) (valid UTF-8 assumed); returns its length. */
size_t tok_utf8_next(const char *s, size_t n, uint32_t *cp);
size_t tok_utf8_encode(uint32_t cp, char out[4]);
/* Length of a valid UTF-8 prefix: returns bytes of the first char, or 0 if
 * the sequence at s is invalid (then *bad gets the maximal-subpart length). */
size_t tok_utf8_valid_char(const unsigned char *s, size_t n, size_t *bad);
bool tok_is_whitespace(uint32_t cp); /* Unicode White_Space (Rust char::is_whitespace) */
bool tok_is_numeric(uint32_t cp);    /* general category N* */
bool tok_is_word(uint32_t cp);       /* regex \w: L*, M*, Nd, Nl, Pc, ZWNJ/ZWJ */
bool tok_is_punct(uint32_t cp);      /* ASCII punctuation or category P* */

/* ---- growable byte buffer with per-byte original offsets ---- */
typedef struct nbuf {
    char *s;
    int32_t *orig;
    size_t len, cap;
} nbuf;

vlm_status nbuf_reserve(nbuf *b, size_t extra, vlm_err *err);
vlm_status nbuf_put(nbuf *b, const char *s, size_t n, int32_t orig, vlm_err *err);
void nbuf_free(nbuf *b);

typedef struct piece {
    size_t off, len;
} piece;
typedef struct plist {
    piece *v;
    size_t n, cap;
} plist;
vlm_status plist_push(plist *l, size_t off, size_t len, vlm_err *err);
void plist_free(plist *l);

/* ---- regular expressions (tok_regex.c): PCRE2, UTF + UCP, JIT ---- */
typedef struct tok_regex tok_regex;
/* literal: the pattern is a plain string, matched as is. Oniguruma's
 * \s / \S (Unicode White_Space) are rewritten for PCRE2. */
vlm_status tok_regex_compile(const char *pat, size_t len, bool literal, const char *field,
                             tok_regex **out, vlm_err *err);
void tok_regex_free(tok_regex *re);
/* Find the next match at or after start. Returns 1 and sets [*ms,*me) on a
 * match, 0 when there is none. */
int tok_regex_find(const tok_regex *re, void *match_data, const char *s, size_t len, size_t start,
                   size_t *ms, size_t *me, vlm_err *err);
void *tok_regex_match_data(const tok_regex *re);
void tok_regex_match_data_free(void *md);

/* A split of a piece: consecutive ranges covering it, each a match or not. */
typedef struct tok_match {
    size_t s, e;
    bool m;
} tok_match;
typedef struct mlist {
    tok_match *v;
    size_t n, cap;
} mlist;
vlm_status mlist_push(mlist *l, size_t s, size_t e, bool m, vlm_err *err);
/* All matches of re in s[0..len) as a covering list (HF Pattern::find_matches). */
vlm_status tok_regex_find_all(const tok_regex *re, const char *s, size_t len, bool invert,
                              mlist *out, vlm_err *err);
/* The same with match data the caller keeps (tok_regex_match_data(re)), so a
 * repeated search allocates nothing once out has grown. */
vlm_status tok_regex_find_all_md(const tok_regex *re, void *md, const char *s, size_t len,
                                 bool invert, mlist *out, vlm_err *err);

/* ---- normalizers (tok_normalize.c) ---- */
typedef enum norm_kind {
    NORM_SEQUENCE,
    NORM_PREPEND,
    NORM_REPLACE,
    NORM_NFC,
    NORM_NFD,
    NORM_NFKC,
    NORM_NFKD,
    NORM_LOWERCASE,
    NORM_STRIP,
} norm_kind;

typedef struct tok_norm {
    norm_kind kind;
    char *str; /* Prepend: text; Replace: literal pattern (when re == NULL) */
    size_t str_len;
    char *content; /* Replace: replacement */
    size_t content_len;
    tok_regex *re;
    bool left, right; /* Strip */
    struct tok_norm *sub;
    size_t n_sub;
} tok_norm;

/* Normalize in -> out (out is cleared first). */
vlm_status tok_normalize(const tok_norm *n, const nbuf *in, nbuf *out, vlm_err *err);
void tok_norm_free(tok_norm *n);

/* ---- pre-tokenizers (tok_pretok.c) ---- */
typedef enum split_behavior {
    SPLIT_REMOVED,
    SPLIT_ISOLATED,
    SPLIT_MERGED_PREV,
    SPLIT_MERGED_NEXT,
    SPLIT_CONTIGUOUS,
} split_behavior;

typedef enum pre_kind {
    PRE_SEQUENCE,
    PRE_METASPACE,
    PRE_BYTELEVEL,
    PRE_SPLIT,
    PRE_DIGITS,
    PRE_WHITESPACE,
    PRE_WHITESPACE_SPLIT,
    PRE_PUNCTUATION,
    PRE_CHAR_DELIMITER,
} pre_kind;

typedef enum prepend_scheme { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } prepend_scheme;

typedef struct tok_pretok {
    pre_kind kind;
    /* Metaspace */
    uint32_t replacement;
    char rep[4];
    size_t rep_len;
    prepend_scheme scheme;
    bool split;
    /* ByteLevel */
    bool add_prefix_space, use_regex;
    /* Split / Digits / Punctuation / CharDelimiterSplit */
    tok_regex *re;
    split_behavior behavior;
    bool invert;
    bool individual_digits;
    uint32_t delimiter;
    struct tok_pretok *sub;
    size_t n_sub;
} tok_pretok;

/* Pre-tokenize the pieces of *cur (pieces of buffer *cb), in place: on
 * return *cb / *cur hold the result; nb / nl are scratch. */
vlm_status tok_pretokenize(const tok_pretok *p, nbuf *cb, plist *cur, nbuf *nb, plist *nl,
                           vlm_err *err);
void tok_pretok_free(tok_pretok *p);
/* The GPT-2 byte -> printable char map and its inverse. */
uint32_t tok_byte_to_char(unsigned char b);
int tok_char_to_byte(uint32_t cp); /* -1 if cp is not in the map */
#define TOK_GPT2_REGEX                                                                             \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

/* ---- BPE model (tok_bpe.c) ---- */
typedef struct merge_ent {
    uint64_t key; /* ((a << 32) | b) + 1; 0 = empty */
    uint32_t rank;
    int32_t new_id;
} merge_ent;

typedef struct cache_ent {
    uint64_t hash;
    uint32_t len, n_ids;
    /* followed by len bytes, then n_ids int32 */
} cache_ent;

typedef struct bpe_model {
    /* vocabulary: id -> string in pool; string -> id in an open table */
    char *pool;
    size_t pool_len;
    uint32_t *str_off; /* [n_ids] */
    uint32_t *str_len; /* [n_ids]; UINT32_MAX: no model token */
    int32_t n_ids;     /* max model id + 1 */
    int32_t *vtab;     /* open addressing, -1 empty */
    size_t vtab_mask;
    int32_t ascii_id[128]; /* id of each 1-byte char, -1 if none */
    merge_ent *mtab;
    size_t mtab_mask;
    int32_t unk_id; /* -1: none */
    int32_t byte_id[256];
    bool byte_fallback, fuse_unk, ignore_merges;
    bool unk_missing;               /* unk_token named but absent from the vocabulary */
    bool meta_split;                /* words may be cut before "▁" (bpe_check_meta_split) */
    char *cont_prefix, *eow_suffix; /* NULL: none */
    size_t cont_prefix_len, eow_suffix_len;
    /* word cache, bounded: direct-mapped, words of at most CACHE_MAX_WORD bytes */
    pthread_mutex_t cache_lock;
    cache_ent **cache;
    size_t cache_slots;
} bpe_model;

int32_t bpe_vocab_get(const bpe_model *m, const char *s, size_t len);
void bpe_merge_put(bpe_model *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id);
void bpe_check_meta_split(bpe_model *m);
vlm_status bpe_tokenize(bpe_model *m, const char *s, size_t len, tok_ids *out, vlm_err *err);
void bpe_free(bpe_model *m);
uint64_t tok_hash(const char *s, size_t len);

/* ---- decoders (tok_decode.c) ---- */
typedef enum dec_kind {
    DEC_SEQUENCE,
    DEC_REPLACE,
    DEC_BYTE_FALLBACK,
    DEC_FUSE,
    DEC_STRIP,
    DEC_BYTE_LEVEL,
    DEC_METASPACE,
} dec_kind;

typedef struct tok_dec {
    dec_kind kind;
    char *str, *content; /* Replace (literal) */
    size_t str_len, content_len;
    tok_regex *re;      /* Replace (regex) */
    uint32_t ch;        /* Strip content / Metaspace replacement */
    size_t start, stop; /* Strip */
    prepend_scheme scheme;
    struct tok_dec *sub;
    size_t n_sub;
} tok_dec;
void tok_dec_free(tok_dec *d);

/* ---- the tokenizer ---- */
typedef struct added_tok {
    int32_t id;
    char *content;
    size_t len;
    bool special, lstrip, rstrip, normalized, single_word;
} added_tok;

/* A byte trie over added-token contents for leftmost-longest matching. */
typedef struct trie_node {
    int32_t first_child, next_sibling;
    int32_t tok; /* index into added[], -1 if no token ends here */
    unsigned char byte;
} trie_node;
typedef struct tok_trie {
    trie_node *nodes;
    size_t n, cap;
    uint8_t first[32]; /* bitmap of first bytes */
} tok_trie;

vlm_status tok_trie_add(tok_trie *t, const char *s, size_t n, int32_t tok, vlm_err *err);

struct tokenizer {
    bpe_model bpe;
    tok_norm *norm;
    tok_pretok *pre;
    tok_dec *dec;
    added_tok *added;
    size_t n_added;
    int32_t *added_by_id; /* [n_ids]: index into added[] or -1 */
    uint8_t *special;     /* [n_ids]: 1 if the id's string is a special token */
    int32_t n_ids;        /* max(model, added) id + 1 */
    tok_trie trie_raw, trie_norm;
    int32_t *post_pre, *post_post; /* TemplateProcessing single: ids around A */
    size_t n_post_pre, n_post_post;
    bool has_post;
};

/* A list of strings in one buffer (the decoders' working form). */
typedef struct tlist {
    char *buf;
    size_t len, cap;
    size_t *off, *tl;
    size_t n, ncap;
} tlist;

/* Everything one decode needs, kept between decodes: the lists only grow,
 * so a streaming detokenizer that decodes a bounded window allocates
 * nothing once they have reached the window's size. */
typedef struct tok_dec_ws {
    tlist a, b, raw;
    mlist ml;
    char *pend; /* ByteFallback's pending bytes */
    size_t pend_cap;
    const char **toks; /* [tok_cap] token strings of the ids */
    size_t *lens;
    size_t tok_cap;
    void *md; /* regex match data for md_re */
    const tok_regex *md_re;
} tok_dec_ws;

/* Decode ids with w; *out (NUL-terminated) lives in w until its next use. */
vlm_status tok_decode_ws(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                         tok_dec_ws *w, const char **out, size_t *out_len, vlm_err *err);
void tok_dec_ws_free(tok_dec_ws *w);
/* Room for n token strings (and n pending bytes) now. */
vlm_status tok_dec_ws_reserve(tok_dec_ws *w, size_t n, vlm_err *err);

/* Run the decoder chain on token strings; result into *out (accounted). */
vlm_status tok_run_decoder(const tokenizer *t, const char **toks, const size_t *lens, size_t n,
                           char **out, size_t *out_len, vlm_err *err);

#endif
