/*
 * stub_common.h - what the test stub libraries (tests/nvml_stub, tests/amdsmi_stub) share: reading their
 * text state file and parsing its values.  Header-only (static inline) so each stub stays one
 * self-contained shared object.
 *
 * State file syntax (both stubs): one item per line, a kind followed by key=value tokens separated by
 * spaces or tabs; '#' starts a comment; strings are percent-encoded (%XX is the byte 0xXX).
 */
#ifndef STUB_COMMON_H
#define STUB_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define STUB_MAX_STATE_BYTES (4u << 20)
#define STUB_MAX_TOKENS 64

/* ---- values ----------------------------------------------------------------------------------------- */

static inline int stub_parse_u64(const char *s, unsigned long long *out)
{
    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

static inline int stub_parse_u32(const char *s, unsigned *out)
{
    unsigned long long v;
    if (stub_parse_u64(s, &v) != 0 || v > UINT_MAX)
        return -1;
    *out = (unsigned)v;
    return 0;
}

static inline int stub_parse_i64(const char *s, long long *out)
{
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 0);
    if (*s == '\0' || errno != 0 || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

static inline int stub_parse_int(const char *s, int *out)
{
    long long v;
    if (stub_parse_i64(s, &v) != 0 || v < INT_MIN || v > INT_MAX)
        return -1;
    *out = (int)v;
    return 0;
}

/* A return code: any int, or an unsigned 32-bit value such as 0xFFFFFFFF (AMDSMI_STATUS_UNKNOWN_ERROR). */
static inline int stub_parse_rc(const char *s, unsigned *out)
{
    long long v;
    if (stub_parse_i64(s, &v) != 0 || v < INT_MIN || v > (long long)UINT_MAX)
        return -1;
    *out = (unsigned)v;
    return 0;
}

static inline int stub_parse_bool(const char *s, int *out)
{
    if (strcmp(s, "0") == 0 || strcmp(s, "1") == 0) {
        *out = s[0] == '1';
        return 0;
    }
    return -1;
}

static inline int stub_parse_double(const char *s, double *out)
{
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (*s == '\0' || errno != 0 || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

static inline int stub_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode s into dst (size bytes including the NUL); a decoded NUL byte is an error. */
static inline int stub_parse_str(const char *s, char *dst, size_t size)
{
    size_t o = 0;
    for (size_t i = 0; s[i] != '\0'; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            int hi = stub_hexval(s[i + 1]);
            int lo = hi < 0 ? -1 : stub_hexval(s[i + 2]);
            if (lo < 0)
                return -1;
            c = hi * 16 + lo;
            if (c == 0)
                return -1;
            i += 2;
        }
        if (o + 1 >= size)
            return -1;
        dst[o++] = (char)c;
    }
    dst[o] = '\0';
    return 0;
}

/* ---- memory, time, logging -------------------------------------------------------------------------- */

/* Make room for one more element in a growable array. */
static inline int stub_grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, ncap * elem);
    if (p == NULL)
        return -1;
    *arr = p;
    *cap = ncap;
    return 0;
}

static inline void stub_sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Append "<sym>\n" or "<sym> <device>\n" to the file named by $env_name (if set), in one O_APPEND write. */
static inline void stub_log_call(const char *env_name, const char *sym, long device)
{
    const char *path = getenv(env_name);
    if (path == NULL || *path == '\0')
        return;
    char line[160];
    int n = device >= 0 ? snprintf(line, sizeof line, "%s %ld\n", sym, device) : snprintf(line, sizeof line, "%s\n", sym);
    if (n <= 0 || (size_t)n >= sizeof line)
        return;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    ssize_t w = write(fd, line, (size_t)n);
    (void)w;
    close(fd);
}

/* ---- the state file --------------------------------------------------------------------------------- */

typedef struct {
    const char *prog; /* prefix of error messages, e.g. "stub_nvml" */
    const char *file;
    int error;        /* set once any line failed: the whole state is unusable */
} stub_reader;

static inline void stub_fail(stub_reader *r, unsigned lineno, const char *msg, const char *tok)
{
    r->error = 1;
    fprintf(stderr, "%s: %s:%u: %s%s%s\n", r->prog, r->file, lineno, msg, tok ? ": " : "", tok ? tok : "");
}

/* Split "key=value" in place; on a token without '=' report it and return NULL. */
static inline char *stub_split_kv(stub_reader *r, unsigned lineno, char *tok)
{
    char *val = strchr(tok, '=');
    if (val == NULL) {
        stub_fail(r, lineno, "expected key=value", tok);
        return NULL;
    }
    *val++ = '\0';
    return val;
}

typedef void (*stub_line_fn)(void *ctx, stub_reader *r, unsigned lineno, char **tok, int ntok);

/*
 * Read the state file line by line, calling fn with the tokens of each non-empty line (comments stripped)
 * until a line fails.  A missing file is not an error (the caller's defaults apply); any other open or
 * read error is.
 */
static inline void stub_read_state(stub_reader *r, stub_line_fn fn, void *ctx)
{
    if (r->file == NULL || *r->file == '\0')
        return;
    FILE *f = fopen(r->file, "re");
    if (f == NULL) {
        if (errno != ENOENT)
            stub_fail(r, 0, "cannot open state file", strerror(errno));
        return;
    }
    char *line = NULL;
    size_t cap = 0, total = 0;
    ssize_t len;
    unsigned lineno = 0;
    while (!r->error && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        total += (size_t)len;
        if (total > STUB_MAX_STATE_BYTES) {
            stub_fail(r, lineno, "state file too large", NULL);
            break;
        }
        char *hash = strchr(line, '#');
        if (hash != NULL)
            *hash = '\0';
        char *tok[STUB_MAX_TOKENS];
        int ntok = 0;
        char *save = NULL;
        for (char *t = strtok_r(line, " \t\r\n", &save); t != NULL; t = strtok_r(NULL, " \t\r\n", &save)) {
            if (ntok == STUB_MAX_TOKENS) {
                stub_fail(r, lineno, "too many tokens", NULL);
                break;
            }
            tok[ntok++] = t;
        }
        if (!r->error && ntok > 0)
            fn(ctx, r, lineno, tok, ntok);
    }
    if (!r->error && ferror(f))
        stub_fail(r, lineno, "cannot read state file", strerror(errno));
    free(line);
    fclose(f);
}

/* ---- table-driven key=value parsing ----------------------------------------------------------------- */

typedef enum {
    STUB_U64,    /* unsigned long long */
    STUB_U64_NA, /* unsigned long long; "na" stores all ones (a "not available" sentinel) */
    STUB_U32,    /* unsigned */
    STUB_U32_NA, /* unsigned; "na" stores 0xFFFFFFFF */
    STUB_I64,    /* long long */
    STUB_RC,     /* unsigned: a return code, negative ints wrap (see stub_parse_rc) */
    STUB_BOOL,   /* int, 0 or 1 */
    STUB_DOUBLE, /* double */
    STUB_STR,    /* char[size], percent-decoded */
    STUB_ENUM,   /* int: index of the value in names[] */
} stub_type;

typedef struct {
    const char *key;
    stub_type type;
    size_t offset;
    size_t size;              /* STUB_STR: buffer size */
    const char *const *names; /* STUB_ENUM: NULL-terminated */
} stub_field;

#define STUB_FIELD(st, key, type) {#key, type, offsetof(st, key), 0, NULL}
#define STUB_FIELD_AS(st, name, member, type) {name, type, offsetof(st, member), 0, NULL}
#define STUB_STRING(st, key) {#key, STUB_STR, offsetof(st, key), sizeof(((st *)0)->key), NULL}
#define STUB_STRING_AS(st, name, member) {name, STUB_STR, offsetof(st, member), sizeof(((st *)0)->member), NULL}
#define STUB_ENUM_AS(st, name, member, names) {name, STUB_ENUM, offsetof(st, member), 0, names}

static inline int stub_parse_value(const stub_field *f, const char *val, void *base)
{
    char *p = (char *)base + f->offset;
    switch (f->type) {
    case STUB_U64_NA:
        if (strcmp(val, "na") == 0) {
            *(unsigned long long *)p = ~0ULL;
            return 0;
        }
        /* fall through */
    case STUB_U64:
        return stub_parse_u64(val, (unsigned long long *)p);
    case STUB_U32_NA:
        if (strcmp(val, "na") == 0) {
            *(unsigned *)p = ~0U;
            return 0;
        }
        /* fall through */
    case STUB_U32:
        return stub_parse_u32(val, (unsigned *)p);
    case STUB_I64:
        return stub_parse_i64(val, (long long *)p);
    case STUB_RC:
        return stub_parse_rc(val, (unsigned *)p);
    case STUB_BOOL:
        return stub_parse_bool(val, (int *)p);
    case STUB_DOUBLE:
        return stub_parse_double(val, (double *)p);
    case STUB_STR:
        return stub_parse_str(val, p, f->size);
    case STUB_ENUM:
        for (int i = 0; f->names[i] != NULL; i++)
            if (strcmp(val, f->names[i]) == 0) {
                *(int *)p = i;
                return 0;
            }
        return -1;
    }
    return -1;
}

/*
 * Parse tok[1..ntok-1] (key=value) into base by the table.  *seen gets bit i set for fields[i] (at most 64
 * fields).  Returns 0, or -1 after reporting an unknown key, a token without '=' or a bad value.
 */
static inline int stub_parse_fields(stub_reader *r, unsigned lineno, char **tok, int ntok, const stub_field *fields,
                                    size_t nfields, void *base, unsigned long long *seen)
{
    *seen = 0;
    for (int i = 1; i < ntok; i++) {
        char *key = tok[i];
        char *val = stub_split_kv(r, lineno, key);
        if (val == NULL)
            return -1;
        size_t k = 0;
        while (k < nfields && strcmp(fields[k].key, key) != 0)
            k++;
        if (k == nfields) {
            stub_fail(r, lineno, "unknown key", key);
            return -1;
        }
        if (stub_parse_value(&fields[k], val, base) != 0) {
            stub_fail(r, lineno, "bad value", key);
            return -1;
        }
        *seen |= 1ULL << k;
    }
    return 0;
}

/* The bit of fields[] whose key is `key` (for checking required keys against *seen). */
static inline unsigned long long stub_field_bit(const stub_field *fields, size_t nfields, const char *key)
{
    for (size_t k = 0; k < nfields; k++)
        if (strcmp(fields[k].key, key) == 0)
            return 1ULL << k;
    return 0;
}

#endif
