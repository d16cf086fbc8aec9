/*
 * stub_nvml.c - a stand-in libnvidia-ml.so.1 for tests, driven by a text state file.
 *
 * Built by tests/nvml_stub/stub.py:
 *   gcc -shared -fPIC -O2 -Wall -Wextra -Werror -Wl,-soname,libnvidia-ml.so.1 -o libnvidia-ml.so.1 stub_nvml.c
 *
 * The state file named by $STUB_NVML_STATE is parsed again on every call that needs state, so a test can
 * change it (atomically: write a temporary file, then rename) while a process keeps using the library.
 * Format and semantics: tests/nvml_stub/README.md.  Signatures, struct layouts and call protocols follow
 * what nvidia-ml-py's pynvml.py passes through ctypes.
 *
 * No state is shared between calls except the init reference count and the call counter (both atomic), so
 * the library is as thread-safe as real NVML.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* ---- NVML types (as pynvml declares them with ctypes) ------------------------------------------------ */

typedef int nvmlReturn_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

#define NVML_VALUE_NOT_AVAILABLE_ULL 0xFFFFFFFFFFFFFFFFULL
#define NVML_NO_INSTANCE_ID 0xFFFFFFFFU
#define PROCESSES_UTILIZATION_INFO_V1 0x01000018U /* sizeof(nvmlProcessesUtilizationInfo_v1_t) | 1 << 24 */

/* Opaque to callers; a handle is the address of one element of g_handles. */
typedef struct stub_handle {
    unsigned index;
} *nvmlDevice_t;

typedef struct { /* c_nvmlProcessInfo_v2_t == _v3_t in pynvml: 24 bytes */
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

typedef struct { /* c_nvmlProcessUtilizationSample_t: 32 bytes */
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil;
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
} nvmlProcessUtilizationSample_t;

typedef struct { /* c_nvmlProcessUtilizationInfo_v1_t: 40 bytes */
    unsigned long long timeStamp;
    unsigned int pid;
    unsigned int smUtil;
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
    unsigned int jpgUtil;
    unsigned int ofaUtil;
} nvmlProcessUtilizationInfo_v1_t;

typedef struct { /* c_nvmlProcessesUtilizationInfo_v1_t: 24 bytes */
    unsigned int version;
    unsigned int processSamplesCount;
    unsigned long long lastSeenTimeStamp;
    nvmlProcessUtilizationInfo_v1_t *procUtilArray;
} nvmlProcessesUtilizationInfo_v1_t;

typedef struct { /* nvmlPciInfo_t (the _v3 layout): 68 bytes */
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

_Static_assert(sizeof(nvmlProcessInfo_t) == 24, "pynvml c_nvmlProcessInfo_v3_t is 24 bytes");
_Static_assert(sizeof(nvmlProcessUtilizationSample_t) == 32, "pynvml sample struct is 32 bytes");
_Static_assert(sizeof(nvmlProcessUtilizationInfo_v1_t) == 40, "pynvml util info struct is 40 bytes");
_Static_assert(sizeof(nvmlProcessesUtilizationInfo_v1_t) == 24, "pynvml processes util info is 24 bytes");
_Static_assert(sizeof(nvmlPciInfo_t) == 68, "pynvml nvmlPciInfo_t is 68 bytes");

/* ---- state ------------------------------------------------------------------------------------------ */

#define MAX_DEVICES 64
#define STR_LEN 96 /* NVML_DEVICE_NAME_V2_BUFFER_SIZE == NVML_DEVICE_UUID_V2_BUFFER_SIZE */
#define MAX_STATE_BYTES (4u << 20)

enum { LIST_COMPUTE = 0, LIST_GRAPHICS = 1, LIST_MPS = 2 };

typedef struct {
    unsigned index;
    char name[STR_LEN];
    char uuid[STR_LEN];
    unsigned long long energy_mj;
    unsigned power_mw;
    int energy_rc, power_rc, procs_rc, util_rc, mig_rc;
    int lost, mig;
    unsigned delay_ms;
} stub_device;

typedef struct {
    unsigned device;
    int list;
    unsigned pid;
    unsigned long long mem;
    unsigned gi, ci;
} stub_proc;

typedef struct {
    unsigned device;
    unsigned pid;
    unsigned long long ts;
    unsigned sm, mem, enc, dec, jpg, ofa;
} stub_sample;

typedef struct {
    char driver[80];
    char nvml[80];
    int init_rc;
    int error; /* the file could not be read or parsed: every call returns NVML_ERROR_UNKNOWN */
    stub_device dev[MAX_DEVICES];
    unsigned ndev;
    stub_proc *procs;
    size_t nprocs, procs_cap;
    stub_sample *samples;
    size_t nsamples, samples_cap;
} stub_state;

static struct stub_handle g_handles[MAX_DEVICES];
static int g_init_refcount;
static unsigned long long g_call_count;

__attribute__((constructor)) static void stub_setup_handles(void)
{
    for (unsigned i = 0; i < MAX_DEVICES; i++)
        g_handles[i].index = i;
}

/* ---- small helpers ---------------------------------------------------------------------------------- */

static void log_call(const char *sym, long device)
{
    __atomic_add_fetch(&g_call_count, 1, __ATOMIC_RELAXED);
    const char *path = getenv("STUB_NVML_CALL_LOG");
    if (path == NULL || *path == '\0')
        return;
    char line[160];
    int n = device >= 0 ? snprintf(line, sizeof line, "%s %ld\n", sym, device) : snprintf(line, sizeof line, "%s\n", sym);
    if (n <= 0 || (size_t)n >= sizeof line)
        return;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    ssize_t w = write(fd, line, (size_t)n); /* one small O_APPEND write: lines never interleave */
    (void)w;
    close(fd);
}

static int is_initialized(void)
{
    return __atomic_load_n(&g_init_refcount, __ATOMIC_SEQ_CST) > 0;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static nvmlReturn_t copy_string(char *dst, unsigned length, const char *src)
{
    if (dst == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    size_t n = strlen(src);
    if (n + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, n + 1);
    return NVML_SUCCESS;
}

/* ---- parsing ---------------------------------------------------------------------------------------- */

static void fail(stub_state *st, const char *file, unsigned lineno, const char *msg, const char *tok)
{
    st->error = 1;
    fprintf(stderr, "stub_nvml: %s:%u: %s%s%s\n", file, lineno, msg, tok ? ": " : "", tok ? tok : "");
}

static int parse_u64(const char *s, unsigned long long *out)
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

static int parse_u32(const char *s, unsigned *out)
{
    unsigned long long v;
    if (parse_u64(s, &v) != 0 || v > UINT_MAX)
        return -1;
    *out = (unsigned)v;
    return 0;
}

static int parse_int(const char *s, int *out)
{
    errno = 0;
    char *end;
    long v = strtol(s, &end, 0);
    if (*s == '\0' || errno != 0 || *end != '\0' || v < INT_MIN || v > INT_MAX)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_bool(const char *s, int *out)
{
    if (strcmp(s, "0") == 0 || strcmp(s, "1") == 0) {
        *out = s[0] == '1';
        return 0;
    }
    return -1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode s into dst (size bytes incl. NUL). */
static int parse_str(const char *s, char *dst, size_t size)
{
    size_t o = 0;
    for (size_t i = 0; s[i] != '\0'; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            int hi = hexval(s[i + 1]);
            int lo = hi < 0 ? -1 : hexval(s[i + 2]);
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

static int grow(void **arr, size_t *cap, size_t n, size_t elem)
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

static stub_device *find_device(stub_state *st, unsigned index)
{
    for (unsigned i = 0; i < st->ndev; i++)
        if (st->dev[i].index == index)
            return &st->dev[i];
    return NULL;
}

#define BAD_VALUE()                                                                                                     \
    do {                                                                                                                \
        fail(st, file, lineno, "bad value", key);                                                                       \
        return;                                                                                                         \
    } while (0)

/* One line, comment already stripped.  tokens[0] is the kind, the others are key=value. */
static void parse_line(stub_state *st, const char *file, unsigned lineno, char **tok, int ntok)
{
    const char *kind = tok[0];
    stub_device d;
    stub_proc p;
    stub_sample s;
    int has_index = 0, has_device = 0, has_pid = 0, has_ts = 0, has_list = 0, has_uuid = 0, has_name = 0;

    memset(&d, 0, sizeof d);
    memset(&p, 0, sizeof p);
    memset(&s, 0, sizeof s);
    p.gi = p.ci = NVML_NO_INSTANCE_ID;

    int is_driver = strcmp(kind, "driver") == 0, is_init = strcmp(kind, "init") == 0;
    int is_device = strcmp(kind, "device") == 0, is_proc = strcmp(kind, "proc") == 0;
    int is_sample = strcmp(kind, "sample") == 0;
    if (!(is_driver || is_init || is_device || is_proc || is_sample)) {
        fail(st, file, lineno, "unknown line kind", kind);
        return;
    }

    for (int i = 1; i < ntok; i++) {
        char *key = tok[i];
        char *val = strchr(key, '=');
        if (val == NULL) {
            fail(st, file, lineno, "expected key=value", key);
            return;
        }
        *val++ = '\0';
        int known = 1;
        if (is_driver) {
            if (strcmp(key, "version") == 0) {
                if (parse_str(val, st->driver, sizeof st->driver) != 0)
                    BAD_VALUE();
            } else if (strcmp(key, "nvml") == 0) {
                if (parse_str(val, st->nvml, sizeof st->nvml) != 0)
                    BAD_VALUE();
            } else
                known = 0;
        } else if (is_init) {
            if (strcmp(key, "rc") == 0) {
                if (parse_int(val, &st->init_rc) != 0)
                    BAD_VALUE();
            } else
                known = 0;
        } else if (is_device) {
            int r = 0;
            if (strcmp(key, "index") == 0) {
                r = parse_u32(val, &d.index);
                has_index = 1;
            } else if (strcmp(key, "name") == 0) {
                r = parse_str(val, d.name, sizeof d.name);
                has_name = 1;
            } else if (strcmp(key, "uuid") == 0) {
                r = parse_str(val, d.uuid, sizeof d.uuid);
                has_uuid = 1;
            } else if (strcmp(key, "energy_mj") == 0)
                r = parse_u64(val, &d.energy_mj);
            else if (strcmp(key, "power_mw") == 0)
                r = parse_u32(val, &d.power_mw);
            else if (strcmp(key, "energy_rc") == 0)
                r = parse_int(val, &d.energy_rc);
            else if (strcmp(key, "power_rc") == 0)
                r = parse_int(val, &d.power_rc);
            else if (strcmp(key, "procs_rc") == 0)
                r = parse_int(val, &d.procs_rc);
            else if (strcmp(key, "util_rc") == 0)
                r = parse_int(val, &d.util_rc);
            else if (strcmp(key, "mig_rc") == 0)
                r = parse_int(val, &d.mig_rc);
            else if (strcmp(key, "lost") == 0)
                r = parse_bool(val, &d.lost);
            else if (strcmp(key, "mig") == 0)
                r = parse_bool(val, &d.mig);
            else if (strcmp(key, "delay_ms") == 0)
                r = parse_u32(val, &d.delay_ms);
            else
                known = 0;
            if (r != 0)
                BAD_VALUE();
        } else if (is_proc) {
            int r = 0;
            if (strcmp(key, "device") == 0) {
                r = parse_u32(val, &p.device);
                has_device = 1;
            } else if (strcmp(key, "list") == 0) {
                has_list = 1;
                if (strcmp(val, "compute") == 0)
                    p.list = LIST_COMPUTE;
                else if (strcmp(val, "graphics") == 0)
                    p.list = LIST_GRAPHICS;
                else if (strcmp(val, "mps") == 0)
                    p.list = LIST_MPS;
                else
                    r = -1;
            } else if (strcmp(key, "pid") == 0) {
                r = parse_u32(val, &p.pid);
                has_pid = 1;
            } else if (strcmp(key, "mem") == 0) {
                if (strcmp(val, "na") == 0)
                    p.mem = NVML_VALUE_NOT_AVAILABLE_ULL;
                else
                    r = parse_u64(val, &p.mem);
            } else if (strcmp(key, "gi") == 0)
                r = parse_u32(val, &p.gi);
            else if (strcmp(key, "ci") == 0)
                r = parse_u32(val, &p.ci);
            else
                known = 0;
            if (r != 0)
                BAD_VALUE();
        } else { /* sample */
            int r = 0;
            if (strcmp(key, "device") == 0) {
                r = parse_u32(val, &s.device);
                has_device = 1;
            } else if (strcmp(key, "pid") == 0) {
                r = parse_u32(val, &s.pid);
                has_pid = 1;
            } else if (strcmp(key, "ts") == 0) {
                r = parse_u64(val, &s.ts);
                has_ts = 1;
            } else if (strcmp(key, "sm") == 0)
                r = parse_u32(val, &s.sm);
            else if (strcmp(key, "mem") == 0)
                r = parse_u32(val, &s.mem);
            else if (strcmp(key, "enc") == 0)
                r = parse_u32(val, &s.enc);
            else if (strcmp(key, "dec") == 0)
                r = parse_u32(val, &s.dec);
            else if (strcmp(key, "jpg") == 0)
                r = parse_u32(val, &s.jpg);
            else if (strcmp(key, "ofa") == 0)
                r = parse_u32(val, &s.ofa);
            else
                known = 0;
            if (r != 0)
                BAD_VALUE();
        }
        if (!known) {
            fail(st, file, lineno, "unknown key", key);
            return;
        }
    }

    if (is_device) {
        if (!has_index) {
            fail(st, file, lineno, "device needs index=", NULL);
            return;
        }
        if (d.index >= MAX_DEVICES || st->ndev >= MAX_DEVICES) {
            fail(st, file, lineno, "device index out of range (max 63)", NULL);
            return;
        }
        if (find_device(st, d.index) != NULL) {
            fail(st, file, lineno, "duplicate device index", NULL);
            return;
        }
        if (!has_name)
            snprintf(d.name, sizeof d.name, "NVIDIA Stub GPU %u", d.index);
        if (!has_uuid)
            snprintf(d.uuid, sizeof d.uuid, "GPU-00000000-0000-4000-8000-%012u", d.index);
        st->dev[st->ndev++] = d;
    } else if (is_proc) {
        if (!has_device || !has_pid || !has_list) {
            fail(st, file, lineno, "proc needs device=, list= and pid=", NULL);
            return;
        }
        if (grow((void **)&st->procs, &st->procs_cap, st->nprocs, sizeof p) != 0) {
            fail(st, file, lineno, "out of memory", NULL);
            return;
        }
        st->procs[st->nprocs++] = p;
    } else if (is_sample) {
        if (!has_device || !has_pid || !has_ts) {
            fail(st, file, lineno, "sample needs device=, pid= and ts=", NULL);
            return;
        }
        if (grow((void **)&st->samples, &st->samples_cap, st->nsamples, sizeof s) != 0) {
            fail(st, file, lineno, "out of memory", NULL);
            return;
        }
        st->samples[st->nsamples++] = s;
    }
}

static void state_free(stub_state *st)
{
    if (st == NULL)
        return;
    free(st->procs);
    free(st->samples);
    free(st);
}

/* Returns NULL only when out of memory; check st->error for a broken file. */
static stub_state *state_load(void)
{
    stub_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    strcpy(st->driver, "550.54.15");

    const char *file = getenv("STUB_NVML_STATE");
    if (file != NULL && *file != '\0') {
        FILE *f = fopen(file, "re");
        if (f == NULL) {
            if (errno != ENOENT)
                fail(st, file, 0, "cannot open state file", strerror(errno));
        } else {
            char *line = NULL;
            size_t cap = 0, total = 0;
            ssize_t len;
            unsigned lineno = 0;
            while (!st->error && (len = getline(&line, &cap, f)) >= 0) {
                lineno++;
                total += (size_t)len;
                if (total > MAX_STATE_BYTES) {
                    fail(st, file, lineno, "state file too large", NULL);
                    break;
                }
                char *hash = strchr(line, '#');
                if (hash != NULL)
                    *hash = '\0';
                char *tok[64];
                int ntok = 0;
                char *save = NULL;
                for (char *t = strtok_r(line, " \t\r\n", &save); t != NULL; t = strtok_r(NULL, " \t\r\n", &save)) {
                    if (ntok == (int)(sizeof tok / sizeof tok[0])) {
                        fail(st, file, lineno, "too many tokens", NULL);
                        break;
                    }
                    tok[ntok++] = t;
                }
                if (!st->error && ntok > 0)
                    parse_line(st, file, lineno, tok, ntok);
            }
            if (!st->error && ferror(f))
                fail(st, file, lineno, "cannot read state file", strerror(errno));
            free(line);
            fclose(f);
        }
        if (!st->error) {
            for (size_t i = 0; i < st->nprocs; i++)
                if (find_device(st, st->procs[i].device) == NULL) {
                    fail(st, file, 0, "proc refers to a device that is not declared", NULL);
                    break;
                }
            for (size_t i = 0; i < st->nsamples && !st->error; i++)
                if (find_device(st, st->samples[i].device) == NULL)
                    fail(st, file, 0, "sample refers to a device that is not declared", NULL);
        }
    }
    if (st->nvml[0] == '\0')
        snprintf(st->nvml, sizeof st->nvml, "12.%s", st->driver);
    return st;
}

/* ---- call prologues --------------------------------------------------------------------------------- */

/* For calls that are not about one device.  On SUCCESS *out holds a state the caller frees. */
static nvmlReturn_t begin_system(const char *sym, stub_state **out)
{
    log_call(sym, -1);
    *out = NULL;
    if (!is_initialized())
        return NVML_ERROR_UNINITIALIZED;
    stub_state *st = state_load();
    if (st == NULL)
        return NVML_ERROR_UNKNOWN;
    if (st->error) {
        state_free(st);
        return NVML_ERROR_UNKNOWN;
    }
    *out = st;
    return NVML_SUCCESS;
}

static long handle_index(nvmlDevice_t h)
{
    for (unsigned i = 0; i < MAX_DEVICES; i++)
        if (h == &g_handles[i])
            return (long)i;
    return -1;
}

/* Checks, in this order: initialized, state readable, device present, delay_ms, lost. */
static nvmlReturn_t enter_device(stub_state *st, unsigned index, const stub_device **out)
{
    const stub_device *d = find_device(st, index);
    if (d == NULL)
        return NVML_ERROR_GPU_IS_LOST; /* the device vanished from the state file after its handle was taken */
    if (d->delay_ms)
        sleep_ms(d->delay_ms);
    if (d->lost)
        return NVML_ERROR_GPU_IS_LOST;
    *out = d;
    return NVML_SUCCESS;
}

static nvmlReturn_t begin_device(const char *sym, nvmlDevice_t h, stub_state **st_out, const stub_device **dev_out)
{
    long idx = handle_index(h);
    log_call(sym, idx);
    *st_out = NULL;
    *dev_out = NULL;
    if (!is_initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (idx < 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    stub_state *st = state_load();
    if (st == NULL)
        return NVML_ERROR_UNKNOWN;
    if (st->error) {
        state_free(st);
        return NVML_ERROR_UNKNOWN;
    }
    nvmlReturn_t rc = enter_device(st, (unsigned)idx, dev_out);
    if (rc != NVML_SUCCESS) {
        state_free(st);
        return rc;
    }
    *st_out = st;
    return NVML_SUCCESS;
}

/* ---- init / system ---------------------------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    log_call("nvmlInitWithFlags", -1);
    stub_state *st = state_load();
    if (st == NULL)
        return NVML_ERROR_UNKNOWN;
    nvmlReturn_t rc = st->error ? NVML_ERROR_UNKNOWN : st->init_rc;
    state_free(st);
    if (rc == NVML_SUCCESS)
        __atomic_add_fetch(&g_init_refcount, 1, __ATOMIC_SEQ_CST);
    return rc;
}

EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    return nvmlInitWithFlags(0);
}

EXPORT nvmlReturn_t nvmlInit(void)
{
    return nvmlInitWithFlags(0);
}

EXPORT nvmlReturn_t nvmlShutdown(void)
{
    log_call("nvmlShutdown", -1);
    int cur = __atomic_load_n(&g_init_refcount, __ATOMIC_SEQ_CST);
    while (cur > 0) {
        if (__atomic_compare_exchange_n(&g_init_refcount, &cur, cur - 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return NVML_SUCCESS;
    }
    return NVML_ERROR_UNINITIALIZED;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 11: return "Interrupt Request Issue";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request.";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    case 19: return "In use by another client";
    case 20: return "Insufficient Memory";
    case 21: return "No data";
    case 22: return "The requested vgpu operation is not available on target device, becasue ECC is enabled";
    case 23: return "Insufficient resources for request";
    case 24: return "Frequency not supported";
    case 25: return "Argument version mismatch";
    case 26: return "Deprecated";
    case 27: return "Not ready";
    case 28: return "GPU not found";
    case 29: return "Invalid state";
    case 30: return "Reset type not supported";
    default: return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    stub_state *st;
    nvmlReturn_t rc = begin_system("nvmlSystemGetDriverVersion", &st);
    if (rc != NVML_SUCCESS)
        return rc;
    rc = copy_string(version, length, st->driver);
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    stub_state *st;
    nvmlReturn_t rc = begin_system("nvmlSystemGetNVMLVersion", &st);
    if (rc != NVML_SUCCESS)
        return rc;
    rc = copy_string(version, length, st->nvml);
    state_free(st);
    return rc;
}

/* ---- enumeration ------------------------------------------------------------------------------------ */

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    stub_state *st;
    nvmlReturn_t rc = begin_system("nvmlDeviceGetCount_v2", &st);
    if (rc != NVML_SUCCESS)
        return rc;
    if (deviceCount == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else
        *deviceCount = st->ndev;
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount)
{
    return nvmlDeviceGetCount_v2(deviceCount);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    log_call("nvmlDeviceGetHandleByIndex_v2", (long)index);
    if (!is_initialized())
        return NVML_ERROR_UNINITIALIZED;
    stub_state *st = state_load();
    if (st == NULL)
        return NVML_ERROR_UNKNOWN;
    nvmlReturn_t rc = NVML_SUCCESS;
    const stub_device *d = NULL;
    if (st->error)
        rc = NVML_ERROR_UNKNOWN;
    else if (device == NULL || index >= MAX_DEVICES || find_device(st, index) == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else
        rc = enter_device(st, index, &d);
    if (rc == NVML_SUCCESS)
        *device = &g_handles[index];
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    stub_state *st;
    nvmlReturn_t rc = begin_system("nvmlDeviceGetHandleByUUID", &st);
    if (rc != NVML_SUCCESS)
        return rc;
    const stub_device *d = NULL;
    if (uuid == NULL || device == NULL) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        rc = NVML_ERROR_NOT_FOUND;
        for (unsigned i = 0; i < st->ndev; i++)
            if (strcmp(st->dev[i].uuid, uuid) == 0) {
                rc = enter_device(st, st->dev[i].index, &d);
                if (rc == NVML_SUCCESS)
                    *device = &g_handles[d->index];
                break;
            }
    }
    state_free(st);
    return rc;
}

/* ---- per-device queries ----------------------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    stub_state *st;
    const stub_device *d;
    nvmlReturn_t rc = begin_device("nvmlDeviceGetIndex", device, &st, &d);
    if (rc != NVML_SUCCESS)
        return rc;
    if (index == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else
        *index = d->index;
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    stub_state *st;
    const stub_device *d;
    nvmlReturn_t rc = begin_device("nvmlDeviceGetName", device, &st, &d);
    if (rc != NVML_SUCCESS)
        return rc;
    rc = copy_string(name, length, d->name);
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    stub_state *st;
    const stub_device *d;
    nvmlReturn_t rc = begin_device("nvmlDeviceGetUUID", device, &st, &d);
    if (rc != NVML_SUCCESS)
        return rc;
    rc = copy_string(uuid, length, d->uuid);
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    stub_state *st;
    const stub_device *d;
    nvmlReturn_t rc = begin_device("nvmlDeviceGetPciInfo_v3", device, &st, &d);
    if (rc != NVML_SUCCESS)
        return rc;
    if (pci == NULL) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        unsigned bus = 0x10u + d->index;
        memset(pci, 0, sizeof *pci);
        pci->domain = 0;
        pci->bus = bus;
        pci->device = 0;
        pci->pciDeviceId = 0x233010DEu;    /* H100 SXM5, vendor 0x10DE */
        pci->pciSubSystemId = 0x16C110DEu;
        snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "0000:%02X:00.0", bus & 0xFFu);
        snprintf(pci->busId, sizeof pci->busId, "00000000:%02X:00.0", bus & 0xFFu);
    }
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy)
{
    stub_state *st;
    const stub_device *d;
    nvmlReturn_t rc = begin_device("nvmlDeviceGetTotalEnergyConsumption", device, &st, &d);
    if (rc != NVML_SUCCESS)
        return rc;
    if (energy == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (d->energy_rc != NVML_SUCCESS)
        rc = d->energy_rc;
    else
        *energy = d->energy_mj;
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power)
{
    stub_state *st;
    const stub_device *d;
    nvmlReturn_t rc = begin_device("nvmlDeviceGetPowerUsage", device, &st, &d);
    if (rc != NVML_SUCCESS)
        return rc;
    if (power == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (d->power_rc != NVML_SUCCESS)
        rc = d->power_rc;
    else
        *power = d->power_mw;
    state_free(st);
    return rc;
}

/* ---- running processes (two-call protocol) ---------------------------------------------------------- */

static nvmlReturn_t running_processes(const char *sym, int list, nvmlDevice_t device, unsigned int *infoCount,
                                      nvmlProcessInfo_t *infos)
{
    stub_state *st;
    const stub_device *d;
    nvmlReturn_t rc = begin_device(sym, device, &st, &d);
    if (rc != NVML_SUCCESS)
        return rc;
    if (infoCount == NULL) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
        goto out;
    }
    if (d->procs_rc != NVML_SUCCESS) {
        rc = d->procs_rc;
        goto out;
    }
    unsigned n = 0;
    for (size_t i = 0; i < st->nprocs; i++)
        if (st->procs[i].device == d->index && st->procs[i].list == list)
            n++;
    if (*infoCount < n) {
        *infoCount = n;
        rc = NVML_ERROR_INSUFFICIENT_SIZE;
        goto out;
    }
    if (n > 0 && infos == NULL) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
        goto out;
    }
    unsigned o = 0;
    for (size_t i = 0; i < st->nprocs; i++) {
        const stub_proc *p = &st->procs[i];
        if (p->device != d->index || p->list != list)
            continue;
        infos[o].pid = p->pid;
        infos[o].usedGpuMemory = p->mem;
        infos[o].gpuInstanceId = p->gi;
        infos[o].computeInstanceId = p->ci;
        o++;
    }
    *infoCount = n;
out:
    state_free(st);
    return rc;
}

#define RUNNING_PROCESSES(fn, list)                                                                                     \
    EXPORT nvmlReturn_t fn(nvmlDevice_t device, unsigned int *infoCount, nvmlProcessInfo_t *infos)                      \
    {                                                                                                                   \
        return running_processes(#fn, list, device, infoCount, infos);                                                  \
    }

RUNNING_PROCESSES(nvmlDeviceGetComputeRunningProcesses_v3, LIST_COMPUTE)
RUNNING_PROCESSES(nvmlDeviceGetComputeRunningProcesses_v2, LIST_COMPUTE)
RUNNING_PROCESSES(nvmlDeviceGetGraphicsRunningProcesses_v3, LIST_GRAPHICS)
RUNNING_PROCESSES(nvmlDeviceGetGraphicsRunningProcesses_v2, LIST_GRAPHICS)
RUNNING_PROCESSES(nvmlDeviceGetMPSComputeRunningProcesses_v3, LIST_MPS)
RUNNING_PROCESSES(nvmlDeviceGetMPSComputeRunningProcesses_v2, LIST_MPS)

/* ---- per-process utilization ------------------------------------------------------------------------ */

static unsigned count_samples(const stub_state *st, unsigned index, unsigned long long since)
{
    unsigned n = 0;
    for (size_t i = 0; i < st->nsamples; i++)
        if (st->samples[i].device == index && st->samples[i].ts > since)
            n++;
    return n;
}

EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device, nvmlProcessUtilizationSample_t *utilization,
                                                    unsigned int *processSamplesCount,
                                                    unsigned long long lastSeenTimeStamp)
{
    stub_state *st;
    const stub_device *d;
    nvmlReturn_t rc = begin_device("nvmlDeviceGetProcessUtilization", device, &st, &d);
    if (rc != NVML_SUCCESS)
        return rc;
    if (processSamplesCount == NULL) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
        goto out;
    }
    if (d->util_rc != NVML_SUCCESS) {
        rc = d->util_rc;
        goto out;
    }
    unsigned n = count_samples(st, d->index, lastSeenTimeStamp);
    if (n == 0) {
        *processSamplesCount = 0;
        rc = NVML_ERROR_NOT_FOUND;
        goto out;
    }
    if (utilization == NULL || *processSamplesCount < n) {
        *processSamplesCount = n;
        rc = NVML_ERROR_INSUFFICIENT_SIZE;
        goto out;
    }
    unsigned o = 0;
    for (size_t i = 0; i < st->nsamples; i++) {
        const stub_sample *s = &st->samples[i];
        if (s->device != d->index || s->ts <= lastSeenTimeStamp)
            continue;
        utilization[o].pid = s->pid;
        utilization[o].timeStamp = s->ts;
        utilization[o].smUtil = s->sm;
        utilization[o].memUtil = s->mem;
        utilization[o].encUtil = s->enc;
        utilization[o].decUtil = s->dec;
        o++;
    }
    *processSamplesCount = n;
out:
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetProcessesUtilizationInfo(nvmlDevice_t device, nvmlProcessesUtilizationInfo_v1_t *info)
{
    stub_state *st;
    const stub_device *d;
    nvmlReturn_t rc = begin_device("nvmlDeviceGetProcessesUtilizationInfo", device, &st, &d);
    if (rc != NVML_SUCCESS)
        return rc;
    if (info == NULL) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
        goto out;
    }
    if (info->version != PROCESSES_UTILIZATION_INFO_V1) {
        rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
        goto out;
    }
    if (d->util_rc != NVML_SUCCESS) {
        rc = d->util_rc;
        goto out;
    }
    unsigned long long since = info->lastSeenTimeStamp;
    unsigned n = count_samples(st, d->index, since);
    if (n == 0) {
        info->processSamplesCount = 0;
        rc = NVML_ERROR_NOT_FOUND;
        goto out;
    }
    if (info->procUtilArray == NULL || info->processSamplesCount < n) {
        info->processSamplesCount = n;
        rc = NVML_ERROR_INSUFFICIENT_SIZE;
        goto out;
    }
    unsigned o = 0;
    for (size_t i = 0; i < st->nsamples; i++) {
        const stub_sample *s = &st->samples[i];
        if (s->device != d->index || s->ts <= since)
            continue;
        nvmlProcessUtilizationInfo_v1_t *u = &info->procUtilArray[o++];
        u->timeStamp = s->ts;
        u->pid = s->pid;
        u->smUtil = s->sm;
        u->memUtil = s->mem;
        u->encUtil = s->enc;
        u->decUtil = s->dec;
        u->jpgUtil = s->jpg;
        u->ofaUtil = s->ofa;
    }
    info->processSamplesCount = n;
out:
    state_free(st);
    return rc;
}

/* ---- MIG (mode only; no MIG device handles) --------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode)
{
    stub_state *st;
    const stub_device *d;
    nvmlReturn_t rc = begin_device("nvmlDeviceGetMigMode", device, &st, &d);
    if (rc != NVML_SUCCESS)
        return rc;
    if (currentMode == NULL || pendingMode == NULL) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else if (d->mig_rc != NVML_SUCCESS) {
        rc = d->mig_rc;
    } else {
        *currentMode = (unsigned)d->mig;
        *pendingMode = (unsigned)d->mig;
    }
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count)
{
    stub_state *st;
    const stub_device *d;
    nvmlReturn_t rc = begin_device("nvmlDeviceGetMaxMigDeviceCount", device, &st, &d);
    if (rc != NVML_SUCCESS)
        return rc;
    if (count == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (d->mig_rc != NVML_SUCCESS)
        rc = d->mig_rc;
    else
        *count = 0; /* no MIG instances are modelled */
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *isMigDevice)
{
    stub_state *st;
    const stub_device *d;
    nvmlReturn_t rc = begin_device("nvmlDeviceIsMigDeviceHandle", device, &st, &d);
    if (rc != NVML_SUCCESS)
        return rc;
    if (isMigDevice == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else
        *isMigDevice = 0;
    state_free(st);
    return rc;
}

/* ---- not NVML: for in-process tests ----------------------------------------------------------------- */

EXPORT unsigned long long nvmlStubGetCallCount(void)
{
    return __atomic_load_n(&g_call_count, __ATOMIC_RELAXED);
}
