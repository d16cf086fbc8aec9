/*
 * stub_nvml.c - a stand-in libnvidia-ml.so.1 for tests, driven by a text state file.
 *
 * Built by tests/nvml_stub/stub.py (gcc -shared -fPIC -O2 -Wall -Wextra -Werror -I../stub_common
 * -Wl,-soname,libnvidia-ml.so.1).
 *
 * The state file named by $STUB_NVML_STATE is parsed again on every call that needs state, so a test can
 * change it (atomically: write a temporary file, then rename) while a process keeps using the library.
 * Format and semantics: tests/nvml_stub/README.md.  Signatures, struct layouts and call protocols follow
 * what nvidia-ml-py's pynvml.py (13.615.71) passes through ctypes and what nvml.h documents.
 *
 * No state is shared between calls except the init reference count, the call counter (both atomic) and
 * GPM sample buffers (owned by the caller, as in NVML), so the library is as thread-safe as real NVML.
 */
#include "stub_common.h"

#include <stdint.h>

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
#define GPU_INSTANCE_PROFILE_INFO_V2 0x02000098U  /* nvmlGpuInstanceProfileInfo_v2: sizeof | 2 << 24 */
#define GPM_SUPPORT_VERSION 1U                     /* NVML_GPM_SUPPORT_VERSION */
#define GPM_METRICS_GET_VERSION 1U                 /* NVML_GPM_METRICS_GET_VERSION */
#define GPM_METRIC_MAX 477U                        /* NVML_GPM_METRIC_MAX in pynvml 13.615.71 */
#define NVML_FI_MAX 308U                           /* one greater than the largest field id (pynvml 13.615.71) */

/* Field ids (nvml.h) and value types the stub serves. */
enum {
    FI_TOTAL_ENERGY_CONSUMPTION = 83, /* mJ since driver load; scopeId ignored (it was "unused" before scopes) */
    FI_POWER_AVERAGE = 185,           /* mW, 1 s average; scopeId = power scope */
    FI_POWER_INSTANT = 186,           /* mW; scopeId = power scope */
    FI_ENERGY = 191,                  /* mJ; scope 0 = same as field 83, scope 1 = module */
};
enum { VALUE_TYPE_UNSIGNED_INT = 1, VALUE_TYPE_UNSIGNED_LONG_LONG = 3 };
enum { POWER_SCOPE_GPU = 0, POWER_SCOPE_MODULE = 1, POWER_SCOPE_MEMORY = 2 };
enum { GPM_GRAPHICS_UTIL = 1, GPM_SM_UTIL = 2, GPM_SM_OCCUPANCY = 3 };

#define MAX_DEVICES 64
#define MAX_GI 32   /* GPU instance ids 0..31 */
#define STR_LEN 96  /* NVML_DEVICE_NAME_V2_BUFFER_SIZE == NVML_DEVICE_UUID_V2_BUFFER_SIZE */

/*
 * Opaque to callers.  A device handle is the address of g_handles[index] (the physical GPU, gi = -1) or of
 * g_mig_handles[index][gi] (the MIG device of GPU instance gi).  A GPU instance handle is the address of
 * g_gi_handles[index][gi].  Addresses never change, so handles stay valid while the state file changes.
 */
typedef struct stub_handle {
    unsigned index;
    int gi;
} *nvmlDevice_t;

typedef struct stub_gi_handle {
    unsigned index;
    unsigned gi;
} *nvmlGpuInstance_t;

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

typedef union { /* c_nvmlValue_t: 8 bytes */
    double dVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    long long sllVal;
    int siVal;
    unsigned short usVal;
} nvmlValue_t;

typedef struct { /* c_nvmlFieldValue_t: 40 bytes */
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp; /* CPU time of the value, µs since 1970 */
    long long latencyUsec;
    unsigned int valueType;
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;

typedef struct { /* c_nvmlMemory_t: 24 bytes */
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct { /* c_nvmlGpuInstancePlacement_t */
    unsigned int start, size;
} nvmlGpuInstancePlacement_t;

typedef struct { /* c_nvmlGpuInstanceProfileInfo_t (v1): 48 bytes */
    unsigned int id, isP2pSupported, sliceCount, instanceCount, multiprocessorCount, copyEngineCount, decoderCount,
        encoderCount, jpegCount, ofaCount;
    unsigned long long memorySizeMB;
} nvmlGpuInstanceProfileInfo_t;

typedef struct { /* c_nvmlGpuInstanceProfileInfo_v2_t: 152 bytes (version 0x02000098) */
    unsigned int version;
    unsigned int id, isP2pSupported, sliceCount, instanceCount, multiprocessorCount, copyEngineCount, decoderCount,
        encoderCount, jpegCount, ofaCount;
    unsigned long long memorySizeMB;
    char name[STR_LEN];
} nvmlGpuInstanceProfileInfo_v2_t;

typedef struct { /* c_nvmlGpuInstanceInfo_t: 24 bytes */
    nvmlDevice_t device;
    unsigned int id;
    unsigned int profileId;
    nvmlGpuInstancePlacement_t placement;
} nvmlGpuInstanceInfo_t;

typedef struct { /* c_nvmlGpmSupport_t */
    unsigned int version;
    unsigned int isSupportedDevice;
} nvmlGpmSupport_t;

typedef struct stub_gpm_sample *nvmlGpmSample_t; /* opaque: allocated by nvmlGpmSampleAlloc */

typedef struct { /* c_nvmlGpmMetric_t: 40 bytes */
    unsigned int metricId;
    nvmlReturn_t nvmlReturn;
    double value;
    struct {
        const char *shortName, *longName, *unit;
    } metricInfo;
} nvmlGpmMetric_t;

typedef struct { /* c_nvmlGpmMetricsGet_t: 24 bytes, then metrics[NVML_GPM_METRIC_MAX of the caller] */
    unsigned int version;
    unsigned int numMetrics;
    nvmlGpmSample_t sample1;
    nvmlGpmSample_t sample2;
    nvmlGpmMetric_t metrics[];
} nvmlGpmMetricsGet_t;

_Static_assert(sizeof(nvmlProcessInfo_t) == 24, "pynvml c_nvmlProcessInfo_v3_t is 24 bytes");
_Static_assert(sizeof(nvmlProcessUtilizationSample_t) == 32, "pynvml sample struct is 32 bytes");
_Static_assert(sizeof(nvmlProcessUtilizationInfo_v1_t) == 40, "pynvml util info struct is 40 bytes");
_Static_assert(sizeof(nvmlProcessesUtilizationInfo_v1_t) == 24, "pynvml processes util info is 24 bytes");
_Static_assert(sizeof(nvmlPciInfo_t) == 68, "pynvml nvmlPciInfo_t is 68 bytes");
_Static_assert(sizeof(nvmlFieldValue_t) == 40, "pynvml c_nvmlFieldValue_t is 40 bytes");
_Static_assert(offsetof(nvmlFieldValue_t, value) == 32, "value follows nvmlReturn");
_Static_assert(sizeof(nvmlGpuInstanceProfileInfo_t) == 48, "pynvml c_nvmlGpuInstanceProfileInfo_t is 48 bytes");
_Static_assert(sizeof(nvmlGpuInstanceProfileInfo_v2_t) == (GPU_INSTANCE_PROFILE_INFO_V2 & 0xFFFFFFU),
               "the v2 version word encodes the struct size");
_Static_assert(sizeof(nvmlGpuInstanceInfo_t) == 24, "pynvml c_nvmlGpuInstanceInfo_t is 24 bytes");
_Static_assert(sizeof(nvmlGpmMetric_t) == 40, "pynvml c_nvmlGpmMetric_t is 40 bytes");
_Static_assert(offsetof(nvmlGpmMetricsGet_t, metrics) == 24, "metrics follow the two sample pointers");

/* ---- state ------------------------------------------------------------------------------------------ */

enum { LIST_COMPUTE = 0, LIST_GRAPHICS = 1, LIST_MPS = 2 };
static const char *const LIST_NAMES[] = {"compute", "graphics", "mps", NULL};

typedef struct {
    unsigned index;
    char name[STR_LEN];
    char uuid[STR_LEN];
    unsigned long long energy_mj;
    unsigned power_mw;
    unsigned energy_rc, power_rc, procs_rc, util_rc, mig_rc;
    int lost, mig;
    unsigned delay_ms;
    /* field values: per power scope; a scope without a value answers NOT_SUPPORTED */
    unsigned power_avg_mw, power_inst_mw, module_power_mw, memory_power_mw;
    unsigned long long module_energy_mj;
    int has_module_power, has_memory_power, has_module_energy;
    unsigned fv_rc;
    /* GPM, memory, MIG */
    int gpm;
    unsigned gpm_rc;
    unsigned long long mem_total, mem_used;
    unsigned mig_max, gi_rc;
    unsigned gpu_util, mem_util; /* nvmlDeviceGetUtilizationRates, % */
} stub_device;

static const stub_field DEVICE_FIELDS[] = {
    STUB_FIELD(stub_device, index, STUB_U32),
    STUB_STRING(stub_device, name),
    STUB_STRING(stub_device, uuid),
    STUB_FIELD(stub_device, energy_mj, STUB_U64),
    STUB_FIELD(stub_device, power_mw, STUB_U32),
    STUB_FIELD(stub_device, energy_rc, STUB_RC),
    STUB_FIELD(stub_device, power_rc, STUB_RC),
    STUB_FIELD(stub_device, procs_rc, STUB_RC),
    STUB_FIELD(stub_device, util_rc, STUB_RC),
    STUB_FIELD(stub_device, mig_rc, STUB_RC),
    STUB_FIELD(stub_device, lost, STUB_BOOL),
    STUB_FIELD(stub_device, mig, STUB_BOOL),
    STUB_FIELD(stub_device, delay_ms, STUB_U32),
    STUB_FIELD(stub_device, power_avg_mw, STUB_U32),
    STUB_FIELD(stub_device, power_inst_mw, STUB_U32),
    STUB_FIELD(stub_device, module_power_mw, STUB_U32),
    STUB_FIELD(stub_device, memory_power_mw, STUB_U32),
    STUB_FIELD(stub_device, module_energy_mj, STUB_U64),
    STUB_FIELD(stub_device, fv_rc, STUB_RC),
    STUB_FIELD(stub_device, gpm, STUB_BOOL),
    STUB_FIELD(stub_device, gpm_rc, STUB_RC),
    STUB_FIELD(stub_device, mem_total, STUB_U64),
    STUB_FIELD(stub_device, mem_used, STUB_U64),
    STUB_FIELD(stub_device, mig_max, STUB_U32),
    STUB_FIELD(stub_device, gi_rc, STUB_RC),
    STUB_FIELD(stub_device, gpu_util, STUB_U32),
    STUB_FIELD(stub_device, mem_util, STUB_U32),
};
#define NFIELDS(t) (sizeof t / sizeof t[0])

typedef struct {
    unsigned device;
    int list;
    unsigned pid;
    unsigned long long mem;
    unsigned gi, ci;
} stub_proc;

static const stub_field PROC_FIELDS[] = {
    STUB_FIELD(stub_proc, device, STUB_U32), STUB_ENUM_AS(stub_proc, "list", list, LIST_NAMES),
    STUB_FIELD(stub_proc, pid, STUB_U32),    STUB_FIELD(stub_proc, mem, STUB_U64_NA),
    STUB_FIELD(stub_proc, gi, STUB_U32),     STUB_FIELD(stub_proc, ci, STUB_U32),
};

typedef struct {
    unsigned device;
    unsigned pid;
    unsigned long long ts;
    unsigned sm, mem, enc, dec, jpg, ofa;
} stub_sample;

static const stub_field SAMPLE_FIELDS[] = {
    STUB_FIELD(stub_sample, device, STUB_U32), STUB_FIELD(stub_sample, pid, STUB_U32),
    STUB_FIELD(stub_sample, ts, STUB_U64),     STUB_FIELD(stub_sample, sm, STUB_U32),
    STUB_FIELD(stub_sample, mem, STUB_U32),    STUB_FIELD(stub_sample, enc, STUB_U32),
    STUB_FIELD(stub_sample, dec, STUB_U32),    STUB_FIELD(stub_sample, jpg, STUB_U32),
    STUB_FIELD(stub_sample, ofa, STUB_U32),
};

/* A GPU instance profile the device supports (nvmlDeviceGetGpuInstanceProfileInfo*). */
typedef struct {
    unsigned device, profile, id, slices, instances, sms, ce, dec, enc, jpg, ofa;
    unsigned long long mem_mb;
    char name[STR_LEN];
} stub_profile;

static const stub_field PROFILE_FIELDS[] = {
    STUB_FIELD(stub_profile, device, STUB_U32),    STUB_FIELD(stub_profile, profile, STUB_U32),
    STUB_FIELD(stub_profile, id, STUB_U32),        STUB_STRING(stub_profile, name),
    STUB_FIELD(stub_profile, slices, STUB_U32),    STUB_FIELD(stub_profile, instances, STUB_U32),
    STUB_FIELD(stub_profile, sms, STUB_U32),       STUB_FIELD(stub_profile, ce, STUB_U32),
    STUB_FIELD(stub_profile, dec, STUB_U32),       STUB_FIELD(stub_profile, enc, STUB_U32),
    STUB_FIELD(stub_profile, jpg, STUB_U32),       STUB_FIELD(stub_profile, ofa, STUB_U32),
    STUB_FIELD(stub_profile, mem_mb, STUB_U64),
};

/* A GPU instance (with one compute instance: together the MIG device). */
typedef struct {
    unsigned device, id, profile_id, start, size, ci;
    unsigned long long mem_used;
    char uuid[STR_LEN];
    const stub_profile *prof; /* resolved once the whole file is read */
} stub_gi;

static const stub_field GI_FIELDS[] = {
    STUB_FIELD(stub_gi, device, STUB_U32), STUB_FIELD(stub_gi, id, STUB_U32),
    STUB_FIELD(stub_gi, profile_id, STUB_U32), STUB_FIELD(stub_gi, start, STUB_U32),
    STUB_FIELD(stub_gi, size, STUB_U32), STUB_FIELD(stub_gi, ci, STUB_U32),
    STUB_FIELD(stub_gi, mem_used, STUB_U64), STUB_STRING(stub_gi, uuid),
};

/* Cumulative GPM activity of the whole GPU (has_gi = 0) or of one GPU instance, at time ts (ns). */
typedef struct {
    unsigned device, gi;
    int has_gi;
    unsigned long long ts, gr, sm, occ;
} stub_gpm;

static const stub_field GPM_FIELDS[] = {
    STUB_FIELD(stub_gpm, device, STUB_U32), STUB_FIELD(stub_gpm, gi, STUB_U32),
    STUB_FIELD(stub_gpm, ts, STUB_U64),     STUB_FIELD(stub_gpm, gr, STUB_U64),
    STUB_FIELD(stub_gpm, sm, STUB_U64),     STUB_FIELD(stub_gpm, occ, STUB_U64),
};

typedef struct {
    char driver[80];
    char nvml[80];
    unsigned init_rc;
    int error; /* the file could not be read or parsed: every call returns NVML_ERROR_UNKNOWN */
    stub_device dev[MAX_DEVICES];
    unsigned ndev;
    stub_proc *procs;
    size_t nprocs, procs_cap;
    stub_sample *samples;
    size_t nsamples, samples_cap;
    stub_profile *profiles;
    size_t nprofiles, profiles_cap;
    stub_gi *gis;
    size_t ngis, gis_cap;
    stub_gpm *gpms;
    size_t ngpms, gpms_cap;
} stub_state;

typedef struct {
    char version[80];
    char nvml[80];
} stub_driver_line;

static const stub_field DRIVER_FIELDS[] = {
    STUB_STRING(stub_driver_line, version),
    STUB_STRING(stub_driver_line, nvml),
};

static const stub_field INIT_FIELDS[] = {
    STUB_FIELD_AS(stub_state, "rc", init_rc, STUB_RC),
};

static struct stub_handle g_handles[MAX_DEVICES];
static struct stub_handle g_mig_handles[MAX_DEVICES][MAX_GI];
static struct stub_gi_handle g_gi_handles[MAX_DEVICES][MAX_GI];
static int g_init_refcount;
static unsigned long long g_call_count;

__attribute__((constructor)) static void stub_setup_handles(void)
{
    for (unsigned i = 0; i < MAX_DEVICES; i++) {
        g_handles[i].index = i;
        g_handles[i].gi = -1;
        for (unsigned g = 0; g < MAX_GI; g++) {
            g_mig_handles[i][g].index = i;
            g_mig_handles[i][g].gi = (int)g;
            g_gi_handles[i][g].index = i;
            g_gi_handles[i][g].gi = g;
        }
    }
}

/* ---- small helpers ---------------------------------------------------------------------------------- */

static void log_call(const char *sym, long device)
{
    __atomic_add_fetch(&g_call_count, 1, __ATOMIC_RELAXED);
    stub_log_call("STUB_NVML_CALL_LOG", sym, device);
}

static int is_initialized(void)
{
    return __atomic_load_n(&g_init_refcount, __ATOMIC_SEQ_CST) > 0;
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

static stub_device *find_device(stub_state *st, unsigned index)
{
    for (unsigned i = 0; i < st->ndev; i++)
        if (st->dev[i].index == index)
            return &st->dev[i];
    return NULL;
}

static const stub_gi *find_gi(const stub_state *st, unsigned device, unsigned id)
{
    for (size_t i = 0; i < st->ngis; i++)
        if (st->gis[i].device == device && st->gis[i].id == id)
            return &st->gis[i];
    return NULL;
}

static const stub_profile *find_profile_by_id(const stub_state *st, unsigned device, unsigned id)
{
    for (size_t i = 0; i < st->nprofiles; i++)
        if (st->profiles[i].device == device && st->profiles[i].id == id)
            return &st->profiles[i];
    return NULL;
}

#define HAS(fields, key) (seen & stub_field_bit(fields, NFIELDS(fields), key))

/* Append *item to a growable array, or report "out of memory". */
#define APPEND(arr, n, cap, item)                                                                                       \
    do {                                                                                                                \
        if (stub_grow((void **)&(arr), &(cap), (n), sizeof *(arr)) != 0) {                                              \
            stub_fail(r, lineno, "out of memory", NULL);                                                                \
            return;                                                                                                     \
        }                                                                                                               \
        (arr)[(n)++] = *(item);                                                                                         \
    } while (0)

static void parse_device(stub_state *st, stub_reader *r, unsigned lineno, char **tok, int ntok)
{
    stub_device d;
    unsigned long long seen;
    memset(&d, 0, sizeof d);
    if (stub_parse_fields(r, lineno, tok, ntok, DEVICE_FIELDS, NFIELDS(DEVICE_FIELDS), &d, &seen) != 0)
        return;
    if (!HAS(DEVICE_FIELDS, "index")) {
        stub_fail(r, lineno, "device needs index=", NULL);
        return;
    }
    if (d.index >= MAX_DEVICES || st->ndev >= MAX_DEVICES) {
        stub_fail(r, lineno, "device index out of range (max 63)", NULL);
        return;
    }
    if (find_device(st, d.index) != NULL) {
        stub_fail(r, lineno, "duplicate device index", NULL);
        return;
    }
    if (!HAS(DEVICE_FIELDS, "name"))
        snprintf(d.name, sizeof d.name, "NVIDIA Stub GPU %u", d.index);
    if (!HAS(DEVICE_FIELDS, "uuid"))
        snprintf(d.uuid, sizeof d.uuid, "GPU-00000000-0000-4000-8000-%012u", d.index);
    if (!HAS(DEVICE_FIELDS, "power_avg_mw"))
        d.power_avg_mw = d.power_mw;
    if (!HAS(DEVICE_FIELDS, "power_inst_mw"))
        d.power_inst_mw = d.power_mw;
    d.has_module_power = HAS(DEVICE_FIELDS, "module_power_mw") != 0;
    d.has_memory_power = HAS(DEVICE_FIELDS, "memory_power_mw") != 0;
    d.has_module_energy = HAS(DEVICE_FIELDS, "module_energy_mj") != 0;
    if (!HAS(DEVICE_FIELDS, "mig_max"))
        d.mig_max = d.mig ? 7 : 0;
    if (d.mem_used > d.mem_total) {
        stub_fail(r, lineno, "mem_used exceeds mem_total", NULL);
        return;
    }
    st->dev[st->ndev++] = d;
}

static void parse_line(void *ctx, stub_reader *r, unsigned lineno, char **tok, int ntok)
{
    stub_state *st = ctx;
    const char *kind = tok[0];
    unsigned long long seen;

    if (strcmp(kind, "driver") == 0) {
        stub_driver_line dl;
        memcpy(dl.version, st->driver, sizeof dl.version);
        memcpy(dl.nvml, st->nvml, sizeof dl.nvml);
        if (stub_parse_fields(r, lineno, tok, ntok, DRIVER_FIELDS, NFIELDS(DRIVER_FIELDS), &dl, &seen) != 0)
            return;
        memcpy(st->driver, dl.version, sizeof st->driver);
        memcpy(st->nvml, dl.nvml, sizeof st->nvml);
    } else if (strcmp(kind, "init") == 0) {
        stub_parse_fields(r, lineno, tok, ntok, INIT_FIELDS, NFIELDS(INIT_FIELDS), st, &seen);
    } else if (strcmp(kind, "device") == 0) {
        parse_device(st, r, lineno, tok, ntok);
    } else if (strcmp(kind, "proc") == 0) {
        stub_proc p = {.gi = NVML_NO_INSTANCE_ID, .ci = NVML_NO_INSTANCE_ID};
        if (stub_parse_fields(r, lineno, tok, ntok, PROC_FIELDS, NFIELDS(PROC_FIELDS), &p, &seen) != 0)
            return;
        if (!HAS(PROC_FIELDS, "device") || !HAS(PROC_FIELDS, "list") || !HAS(PROC_FIELDS, "pid")) {
            stub_fail(r, lineno, "proc needs device=, list= and pid=", NULL);
            return;
        }
        APPEND(st->procs, st->nprocs, st->procs_cap, &p);
    } else if (strcmp(kind, "sample") == 0) {
        stub_sample s = {0};
        if (stub_parse_fields(r, lineno, tok, ntok, SAMPLE_FIELDS, NFIELDS(SAMPLE_FIELDS), &s, &seen) != 0)
            return;
        if (!HAS(SAMPLE_FIELDS, "device") || !HAS(SAMPLE_FIELDS, "pid") || !HAS(SAMPLE_FIELDS, "ts")) {
            stub_fail(r, lineno, "sample needs device=, pid= and ts=", NULL);
            return;
        }
        APPEND(st->samples, st->nsamples, st->samples_cap, &s);
    } else if (strcmp(kind, "profile") == 0) {
        stub_profile p = {0};
        if (stub_parse_fields(r, lineno, tok, ntok, PROFILE_FIELDS, NFIELDS(PROFILE_FIELDS), &p, &seen) != 0)
            return;
        if (!HAS(PROFILE_FIELDS, "device") || !HAS(PROFILE_FIELDS, "profile") || !HAS(PROFILE_FIELDS, "id") ||
            !HAS(PROFILE_FIELDS, "name")) {
            stub_fail(r, lineno, "profile needs device=, profile=, id= and name=", NULL);
            return;
        }
        APPEND(st->profiles, st->nprofiles, st->profiles_cap, &p);
    } else if (strcmp(kind, "gi") == 0) {
        stub_gi g = {0};
        if (stub_parse_fields(r, lineno, tok, ntok, GI_FIELDS, NFIELDS(GI_FIELDS), &g, &seen) != 0)
            return;
        if (!HAS(GI_FIELDS, "device") || !HAS(GI_FIELDS, "id") || !HAS(GI_FIELDS, "profile_id")) {
            stub_fail(r, lineno, "gi needs device=, id= and profile_id=", NULL);
            return;
        }
        if (g.id >= MAX_GI) {
            stub_fail(r, lineno, "gi id out of range (max 31)", NULL);
            return;
        }
        if (!HAS(GI_FIELDS, "uuid"))
            snprintf(g.uuid, sizeof g.uuid, "MIG-00000000-0000-4000-8000-%06u%06u", g.device, g.id);
        if (!HAS(GI_FIELDS, "size"))
            g.size = 0; /* the profile's slice count, filled in once profiles are known */
        APPEND(st->gis, st->ngis, st->gis_cap, &g);
    } else if (strcmp(kind, "gpm") == 0) {
        stub_gpm g = {0};
        if (stub_parse_fields(r, lineno, tok, ntok, GPM_FIELDS, NFIELDS(GPM_FIELDS), &g, &seen) != 0)
            return;
        if (!HAS(GPM_FIELDS, "device") || !HAS(GPM_FIELDS, "ts")) {
            stub_fail(r, lineno, "gpm needs device= and ts=", NULL);
            return;
        }
        g.has_gi = HAS(GPM_FIELDS, "gi") != 0;
        APPEND(st->gpms, st->ngpms, st->gpms_cap, &g);
    } else {
        stub_fail(r, lineno, "unknown line kind", kind);
    }
}

static void state_free(stub_state *st)
{
    if (st == NULL)
        return;
    free(st->procs);
    free(st->samples);
    free(st->profiles);
    free(st->gis);
    free(st->gpms);
    free(st);
}

/* Cross-line checks: every item refers to a declared device (and gi lines to a declared profile). */
static void check_references(stub_state *st, stub_reader *r)
{
    for (size_t i = 0; i < st->nprocs && !r->error; i++)
        if (find_device(st, st->procs[i].device) == NULL)
            stub_fail(r, 0, "proc refers to a device that is not declared", NULL);
    for (size_t i = 0; i < st->nsamples && !r->error; i++)
        if (find_device(st, st->samples[i].device) == NULL)
            stub_fail(r, 0, "sample refers to a device that is not declared", NULL);
    for (size_t i = 0; i < st->nprofiles && !r->error; i++)
        if (find_device(st, st->profiles[i].device) == NULL)
            stub_fail(r, 0, "profile refers to a device that is not declared", NULL);
    for (size_t i = 0; i < st->ngis && !r->error; i++) {
        stub_gi *g = &st->gis[i];
        if (find_device(st, g->device) == NULL)
            stub_fail(r, 0, "gi refers to a device that is not declared", NULL);
        else if ((g->prof = find_profile_by_id(st, g->device, g->profile_id)) == NULL)
            stub_fail(r, 0, "gi refers to a profile id that is not declared on its device", NULL);
        else if (find_gi(st, g->device, g->id) != g)
            stub_fail(r, 0, "duplicate gi id on a device", NULL);
        else if (g->size == 0)
            g->size = g->prof->slices;
    }
    for (size_t i = 0; i < st->ngpms && !r->error; i++) {
        const stub_gpm *g = &st->gpms[i];
        if (find_device(st, g->device) == NULL)
            stub_fail(r, 0, "gpm refers to a device that is not declared", NULL);
        else if (g->has_gi && find_gi(st, g->device, g->gi) == NULL)
            stub_fail(r, 0, "gpm refers to a gi that is not declared", NULL);
    }
}

/* Returns NULL only when out of memory; check st->error for a broken file. */
static stub_state *state_load(void)
{
    stub_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    strcpy(st->driver, "550.54.15");
    stub_reader r = {.prog = "stub_nvml", .file = getenv("STUB_NVML_STATE"), .error = 0};
    stub_read_state(&r, parse_line, st);
    if (!r.error)
        check_references(st, &r);
    st->error = r.error;
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

/* The handle's device index and GPU instance (-1: the physical GPU); -1 when h is no handle of ours. */
static long resolve_handle(nvmlDevice_t h, int *gi)
{
    uintptr_t p = (uintptr_t)h;
    uintptr_t base = (uintptr_t)g_handles, mig = (uintptr_t)g_mig_handles;
    *gi = -1;
    if (p >= base && p < base + sizeof g_handles && (p - base) % sizeof g_handles[0] == 0)
        return (long)((p - base) / sizeof g_handles[0]);
    if (p >= mig && p < mig + sizeof g_mig_handles && (p - mig) % sizeof g_handles[0] == 0) {
        *gi = h->gi;
        return (long)h->index;
    }
    return -1;
}

/* Checks, in this order: initialized, state readable, device present, delay_ms, lost. */
static nvmlReturn_t enter_device(stub_state *st, unsigned index, const stub_device **out)
{
    const stub_device *d = find_device(st, index);
    if (d == NULL)
        return NVML_ERROR_GPU_IS_LOST; /* the device vanished from the state file after its handle was taken */
    if (d->delay_ms)
        stub_sleep_ms(d->delay_ms);
    if (d->lost)
        return NVML_ERROR_GPU_IS_LOST;
    *out = d;
    return NVML_SUCCESS;
}

/*
 * Prologue of a per-device call.  A MIG device handle resolves to its parent GPU (*dev_out) and its GPU
 * instance (*gi_out, NULL for a physical handle); a MIG handle whose instance is gone is INVALID_ARGUMENT.
 */
static nvmlReturn_t begin_device_mig(const char *sym, nvmlDevice_t h, stub_state **st_out,
                                     const stub_device **dev_out, const stub_gi **gi_out)
{
    int gi;
    long idx = resolve_handle(h, &gi);
    log_call(sym, idx);
    *st_out = NULL;
    *dev_out = NULL;
    *gi_out = NULL;
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
    if (rc == NVML_SUCCESS && gi >= 0 && (*gi_out = find_gi(st, (unsigned)idx, (unsigned)gi)) == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS) {
        state_free(st);
        return rc;
    }
    *st_out = st;
    return NVML_SUCCESS;
}

/* Prologue of a call that is not MIG-aware: a MIG device handle answers for its parent GPU. */
static nvmlReturn_t begin_device(const char *sym, nvmlDevice_t h, stub_state **st_out, const stub_device **dev_out)
{
    const stub_gi *gi;
    return begin_device_mig(sym, h, st_out, dev_out, &gi);
}

/* Prologue of a GPU instance handle call. */
static nvmlReturn_t begin_gpu_instance(const char *sym, nvmlGpuInstance_t h, stub_state **st_out,
                                       const stub_device **dev_out, const stub_gi **gi_out)
{
    uintptr_t p = (uintptr_t)h, base = (uintptr_t)g_gi_handles;
    int ours = p >= base && p < base + sizeof g_gi_handles && (p - base) % sizeof g_gi_handles[0][0] == 0;
    log_call(sym, ours ? (long)h->index : -1);
    *st_out = NULL;
    *dev_out = NULL;
    *gi_out = NULL;
    if (!is_initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (!ours)
        return NVML_ERROR_INVALID_ARGUMENT;
    stub_state *st = state_load();
    if (st == NULL)
        return NVML_ERROR_UNKNOWN;
    if (st->error) {
        state_free(st);
        return NVML_ERROR_UNKNOWN;
    }
    nvmlReturn_t rc = enter_device(st, h->index, dev_out);
    if (rc == NVML_SUCCESS && (*dev_out)->gi_rc != NVML_SUCCESS)
        rc = (nvmlReturn_t)(*dev_out)->gi_rc;
    if (rc == NVML_SUCCESS && (*gi_out = find_gi(st, h->index, h->gi)) == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT; /* the instance was destroyed */
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
    nvmlReturn_t rc = st->error ? NVML_ERROR_UNKNOWN : (nvmlReturn_t)st->init_rc;
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
    const stub_gi *gi;
    nvmlReturn_t rc = begin_device_mig("nvmlDeviceGetName", device, &st, &d, &gi);
    if (rc != NVML_SUCCESS)
        return rc;
    if (gi == NULL) {
        rc = copy_string(name, length, d->name);
    } else { /* a MIG device: "<GPU name> MIG <profile name>" */
        char mig_name[2 * STR_LEN + 8];
        snprintf(mig_name, sizeof mig_name, "%s MIG %s", d->name, gi->prof->name);
        rc = copy_string(name, length, mig_name);
    }
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    stub_state *st;
    const stub_device *d;
    const stub_gi *gi;
    nvmlReturn_t rc = begin_device_mig("nvmlDeviceGetUUID", device, &st, &d, &gi);
    if (rc != NVML_SUCCESS)
        return rc;
    rc = copy_string(uuid, length, gi == NULL ? d->uuid : gi->uuid);
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
        rc = (nvmlReturn_t)d->energy_rc;
    else
        *energy = d->energy_mj;
    state_free(st);
    return rc;
}

/* nvmlUtilization_t: gpu, memory (percent of the last sample period); util_rc as for process utilisation */
typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization)
{
    stub_state *st;
    const stub_device *d;
    nvmlReturn_t rc = begin_device("nvmlDeviceGetUtilizationRates", device, &st, &d);
    if (rc != NVML_SUCCESS)
        return rc;
    if (utilization == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (d->util_rc != NVML_SUCCESS)
        rc = (nvmlReturn_t)d->util_rc;
    else {
        utilization->gpu = d->gpu_util;
        utilization->memory = d->mem_util;
    }
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
        rc = (nvmlReturn_t)d->power_rc;
    else
        *power = d->power_mw;
    state_free(st);
    return rc;
}

/* ---- running processes (two-call protocol) ---------------------------------------------------------- */

/* A process of this list on this GPU; on a MIG device handle only those of its GPU and compute instance. */
static int proc_matches(const stub_proc *p, const stub_device *d, const stub_gi *gi, int list)
{
    return p->device == d->index && p->list == list && (gi == NULL || (p->gi == gi->id && p->ci == gi->ci));
}

static nvmlReturn_t running_processes(const char *sym, int list, nvmlDevice_t device, unsigned int *infoCount,
                                      nvmlProcessInfo_t *infos)
{
    stub_state *st;
    const stub_device *d;
    const stub_gi *gi;
    nvmlReturn_t rc = begin_device_mig(sym, device, &st, &d, &gi);
    if (rc != NVML_SUCCESS)
        return rc;
    if (infoCount == NULL) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
        goto out;
    }
    if (d->procs_rc != NVML_SUCCESS) {
        rc = (nvmlReturn_t)d->procs_rc;
        goto out;
    }
    unsigned n = 0;
    for (size_t i = 0; i < st->nprocs; i++)
        if (proc_matches(&st->procs[i], d, gi, list))
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
        if (!proc_matches(p, d, gi, list))
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
        rc = (nvmlReturn_t)d->util_rc;
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
        rc = (nvmlReturn_t)d->util_rc;
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


/* ---- field values ----------------------------------------------------------------------------------- */

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

/* One power field: scope 0 from the board value (power_rc applies), 1 module, 2 memory, others unsupported. */
static void power_field(const stub_device *d, unsigned board_mw, nvmlFieldValue_t *v)
{
    v->valueType = VALUE_TYPE_UNSIGNED_INT;
    if (v->scopeId == POWER_SCOPE_GPU && d->power_rc != NVML_SUCCESS)
        v->nvmlReturn = (nvmlReturn_t)d->power_rc;
    else if (v->scopeId == POWER_SCOPE_GPU)
        v->value.uiVal = board_mw;
    else if (v->scopeId == POWER_SCOPE_MODULE && d->has_module_power)
        v->value.uiVal = d->module_power_mw;
    else if (v->scopeId == POWER_SCOPE_MEMORY && d->has_memory_power)
        v->value.uiVal = d->memory_power_mw;
    else
        v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
}

static void energy_field(const stub_device *d, int scoped, nvmlFieldValue_t *v)
{
    v->valueType = VALUE_TYPE_UNSIGNED_LONG_LONG;
    unsigned scope = scoped ? v->scopeId : POWER_SCOPE_GPU;
    if (scope == POWER_SCOPE_GPU && d->energy_rc != NVML_SUCCESS)
        v->nvmlReturn = (nvmlReturn_t)d->energy_rc;
    else if (scope == POWER_SCOPE_GPU)
        v->value.ullVal = d->energy_mj;
    else if (scope == POWER_SCOPE_MODULE && d->has_module_energy)
        v->value.ullVal = d->module_energy_mj;
    else
        v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
}

EXPORT nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount, nvmlFieldValue_t *values)
{
    stub_state *st;
    const stub_device *d;
    nvmlReturn_t rc = begin_device("nvmlDeviceGetFieldValues", device, &st, &d);
    if (rc != NVML_SUCCESS)
        return rc;
    if (values == NULL || valuesCount <= 0) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else if (d->fv_rc != NVML_SUCCESS) {
        rc = (nvmlReturn_t)d->fv_rc;
    } else {
        long long ts = now_us();
        for (int i = 0; i < valuesCount; i++) {
            nvmlFieldValue_t *v = &values[i];
            memset(&v->value, 0, sizeof v->value);
            v->timestamp = ts;
            v->latencyUsec = 0;
            v->valueType = VALUE_TYPE_UNSIGNED_INT;
            v->nvmlReturn = NVML_SUCCESS;
            switch (v->fieldId) {
            case FI_TOTAL_ENERGY_CONSUMPTION:
                energy_field(d, 0, v);
                break;
            case FI_ENERGY:
                energy_field(d, 1, v);
                break;
            case FI_POWER_AVERAGE:
                power_field(d, d->power_avg_mw, v);
                break;
            case FI_POWER_INSTANT:
                power_field(d, d->power_inst_mw, v);
                break;
            default:
                v->nvmlReturn = v->fieldId >= NVML_FI_MAX ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_NOT_SUPPORTED;
            }
        }
    }
    state_free(st);
    return rc;
}

/* ---- memory ----------------------------------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    stub_state *st;
    const stub_device *d;
    const stub_gi *gi;
    nvmlReturn_t rc = begin_device_mig("nvmlDeviceGetMemoryInfo", device, &st, &d, &gi);
    if (rc != NVML_SUCCESS)
        return rc;
    if (memory == NULL) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        memory->total = gi == NULL ? d->mem_total : gi->prof->mem_mb << 20;
        memory->used = gi == NULL ? d->mem_used : gi->mem_used;
        memory->free = memory->total > memory->used ? memory->total - memory->used : 0;
    }
    state_free(st);
    return rc;
}

/* ---- MIG: mode and MIG device handles --------------------------------------------------------------- */

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
        rc = (nvmlReturn_t)d->mig_rc;
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
        rc = (nvmlReturn_t)d->mig_rc;
    else
        *count = d->mig_max;
    state_free(st);
    return rc;
}

/* MIG devices are the device's gi lines in file order: index i is the i-th one. */
EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                        nvmlDevice_t *migDevice)
{
    stub_state *st;
    const stub_device *d;
    const stub_gi *self;
    nvmlReturn_t rc = begin_device_mig("nvmlDeviceGetMigDeviceHandleByIndex", device, &st, &d, &self);
    if (rc != NVML_SUCCESS)
        return rc;
    if (migDevice == NULL || self != NULL) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else if (d->mig_rc != NVML_SUCCESS) {
        rc = (nvmlReturn_t)d->mig_rc;
    } else if (!d->mig) {
        rc = NVML_ERROR_NOT_SUPPORTED;
    } else if (index >= d->mig_max) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        rc = NVML_ERROR_NOT_FOUND;
        unsigned seen = 0;
        for (size_t i = 0; i < st->ngis; i++) {
            if (st->gis[i].device != d->index)
                continue;
            if (seen++ == index) {
                *migDevice = &g_mig_handles[d->index][st->gis[i].id];
                rc = NVML_SUCCESS;
                break;
            }
        }
    }
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *isMigDevice)
{
    stub_state *st;
    const stub_device *d;
    const stub_gi *gi;
    nvmlReturn_t rc = begin_device_mig("nvmlDeviceIsMigDeviceHandle", device, &st, &d, &gi);
    if (rc != NVML_SUCCESS)
        return rc;
    if (isMigDevice == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else
        *isMigDevice = gi != NULL;
    state_free(st);
    return rc;
}

/* GetGpuInstanceId / GetComputeInstanceId: only MIG device handles have them. */
static nvmlReturn_t mig_instance_id(const char *sym, nvmlDevice_t device, unsigned int *id, int compute)
{
    stub_state *st;
    const stub_device *d;
    const stub_gi *gi;
    nvmlReturn_t rc = begin_device_mig(sym, device, &st, &d, &gi);
    if (rc != NVML_SUCCESS)
        return rc;
    if (id == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (gi == NULL)
        rc = NVML_ERROR_NOT_SUPPORTED;
    else
        *id = compute ? gi->ci : gi->id;
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id)
{
    return mig_instance_id("nvmlDeviceGetGpuInstanceId", device, id, 0);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id)
{
    return mig_instance_id("nvmlDeviceGetComputeInstanceId", device, id, 1);
}

EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t migDevice, nvmlDevice_t *device)
{
    stub_state *st;
    const stub_device *d;
    const stub_gi *gi;
    nvmlReturn_t rc = begin_device_mig("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", migDevice, &st, &d, &gi);
    if (rc != NVML_SUCCESS)
        return rc;
    if (device == NULL || gi == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else
        *device = &g_handles[d->index];
    state_free(st);
    return rc;
}

/* ---- MIG: GPU instance API -------------------------------------------------------------------------- */

/* Shared checks of the GPU instance calls on a physical device handle. */
static nvmlReturn_t gi_api_check(const stub_device *d, const stub_gi *self)
{
    if (self != NULL)
        return NVML_ERROR_INVALID_ARGUMENT; /* a MIG device handle, not a GPU */
    if (d->mig_rc != NVML_SUCCESS)
        return (nvmlReturn_t)d->mig_rc;
    if (d->gi_rc != NVML_SUCCESS)
        return (nvmlReturn_t)d->gi_rc;
    if (!d->mig)
        return NVML_ERROR_NOT_SUPPORTED;
    return NVML_SUCCESS;
}

static const stub_profile *find_profile(const stub_state *st, unsigned device, unsigned profile)
{
    for (size_t i = 0; i < st->nprofiles; i++)
        if (st->profiles[i].device == device && st->profiles[i].profile == profile)
            return &st->profiles[i];
    return NULL;
}

static nvmlReturn_t profile_info(const char *sym, nvmlDevice_t device, unsigned profile,
                                 nvmlGpuInstanceProfileInfo_v2_t *v2, nvmlGpuInstanceProfileInfo_t *v1)
{
    stub_state *st;
    const stub_device *d;
    const stub_gi *self;
    nvmlReturn_t rc = begin_device_mig(sym, device, &st, &d, &self);
    if (rc != NVML_SUCCESS)
        return rc;
    const stub_profile *p = NULL;
    if (v2 == NULL && v1 == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (v2 != NULL && v2->version != GPU_INSTANCE_PROFILE_INFO_V2)
        rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    else if ((rc = gi_api_check(d, self)) == NVML_SUCCESS && (p = find_profile(st, d->index, profile)) == NULL)
        rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS) {
        nvmlGpuInstanceProfileInfo_t info = {
            .id = p->id,
            .isP2pSupported = 0,
            .sliceCount = p->slices,
            .instanceCount = p->instances,
            .multiprocessorCount = p->sms,
            .copyEngineCount = p->ce,
            .decoderCount = p->dec,
            .encoderCount = p->enc,
            .jpegCount = p->jpg,
            .ofaCount = p->ofa,
            .memorySizeMB = p->mem_mb,
        };
        if (v1 != NULL) {
            *v1 = info;
        } else { /* v2: the version word, the v1 fields (memorySizeMB realigned), then the name */
            v2->id = info.id;
            v2->isP2pSupported = info.isP2pSupported;
            v2->sliceCount = info.sliceCount;
            v2->instanceCount = info.instanceCount;
            v2->multiprocessorCount = info.multiprocessorCount;
            v2->copyEngineCount = info.copyEngineCount;
            v2->decoderCount = info.decoderCount;
            v2->encoderCount = info.encoderCount;
            v2->jpegCount = info.jpegCount;
            v2->ofaCount = info.ofaCount;
            v2->memorySizeMB = info.memorySizeMB;
            snprintf(v2->name, sizeof v2->name, "%s", p->name);
        }
    }
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceProfileInfoV(nvmlDevice_t device, unsigned int profile,
                                                         nvmlGpuInstanceProfileInfo_v2_t *info)
{
    return profile_info("nvmlDeviceGetGpuInstanceProfileInfoV", device, profile, info, NULL);
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceProfileInfo(nvmlDevice_t device, unsigned int profile,
                                                        nvmlGpuInstanceProfileInfo_t *info)
{
    return profile_info("nvmlDeviceGetGpuInstanceProfileInfo", device, profile, NULL, info);
}

/* The caller's buffer must hold the profile's instanceCount entries (there is no count-query protocol). */
EXPORT nvmlReturn_t nvmlDeviceGetGpuInstances(nvmlDevice_t device, unsigned int profileId,
                                              nvmlGpuInstance_t *gpuInstances, unsigned int *count)
{
    stub_state *st;
    const stub_device *d;
    const stub_gi *self;
    nvmlReturn_t rc = begin_device_mig("nvmlDeviceGetGpuInstances", device, &st, &d, &self);
    if (rc != NVML_SUCCESS)
        return rc;
    if (gpuInstances == NULL || count == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if ((rc = gi_api_check(d, self)) == NVML_SUCCESS && find_profile_by_id(st, d->index, profileId) == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) {
        unsigned n = 0;
        for (size_t i = 0; i < st->ngis; i++)
            if (st->gis[i].device == d->index && st->gis[i].profile_id == profileId)
                gpuInstances[n++] = &g_gi_handles[d->index][st->gis[i].id];
        *count = n;
    }
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceById(nvmlDevice_t device, unsigned int id, nvmlGpuInstance_t *gpuInstance)
{
    stub_state *st;
    const stub_device *d;
    const stub_gi *self;
    nvmlReturn_t rc = begin_device_mig("nvmlDeviceGetGpuInstanceById", device, &st, &d, &self);
    if (rc != NVML_SUCCESS)
        return rc;
    if (gpuInstance == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if ((rc = gi_api_check(d, self)) == NVML_SUCCESS && find_gi(st, d->index, id) == NULL)
        rc = NVML_ERROR_NOT_FOUND;
    if (rc == NVML_SUCCESS)
        *gpuInstance = &g_gi_handles[d->index][id];
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlGpuInstanceGetInfo(nvmlGpuInstance_t gpuInstance, nvmlGpuInstanceInfo_t *info)
{
    stub_state *st;
    const stub_device *d;
    const stub_gi *gi;
    nvmlReturn_t rc = begin_gpu_instance("nvmlGpuInstanceGetInfo", gpuInstance, &st, &d, &gi);
    if (rc != NVML_SUCCESS)
        return rc;
    if (info == NULL) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        info->device = &g_handles[d->index];
        info->id = gi->id;
        info->profileId = gi->profile_id;
        info->placement.start = gi->start;
        info->placement.size = gi->size;
    }
    state_free(st);
    return rc;
}

/* ---- GPM -------------------------------------------------------------------------------------------- */

#define GPM_SAMPLE_MAGIC 0x47504D53U /* "GPMS" */

struct stub_gpm_sample {
    unsigned magic;
    int filled;
    unsigned device;
    int gi; /* -1: the whole GPU */
    unsigned long long ts, gr, sm, occ;
};

static int gpm_sample_ok(const struct stub_gpm_sample *s)
{
    return s != NULL && s->magic == GPM_SAMPLE_MAGIC;
}

EXPORT nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t device, nvmlGpmSupport_t *gpmSupport)
{
    stub_state *st;
    const stub_device *d;
    nvmlReturn_t rc = begin_device("nvmlGpmQueryDeviceSupport", device, &st, &d);
    if (rc != NVML_SUCCESS)
        return rc;
    if (gpmSupport == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (gpmSupport->version != GPM_SUPPORT_VERSION)
        rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    else if (d->gpm_rc != NVML_SUCCESS)
        rc = (nvmlReturn_t)d->gpm_rc;
    else
        gpmSupport->isSupportedDevice = (unsigned)d->gpm;
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *gpmSample)
{
    log_call("nvmlGpmSampleAlloc", -1);
    if (!is_initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (gpmSample == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct stub_gpm_sample *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NVML_ERROR_UNKNOWN;
    s->magic = GPM_SAMPLE_MAGIC;
    *gpmSample = s;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t gpmSample)
{
    log_call("nvmlGpmSampleFree", -1);
    if (!is_initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (!gpm_sample_ok(gpmSample))
        return NVML_ERROR_INVALID_ARGUMENT;
    gpmSample->magic = 0;
    free(gpmSample);
    return NVML_SUCCESS;
}

/* Fill the sample from the gpm line of (device, gi); a missing line reads as ts = 0 and no activity. */
static nvmlReturn_t gpm_sample(const char *sym, nvmlDevice_t device, int mig, unsigned gi_id, nvmlGpmSample_t s)
{
    stub_state *st;
    const stub_device *d;
    const stub_gi *self;
    nvmlReturn_t rc = begin_device_mig(sym, device, &st, &d, &self);
    if (rc != NVML_SUCCESS)
        return rc;
    if (!gpm_sample_ok(s) || self != NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (d->gpm_rc != NVML_SUCCESS)
        rc = (nvmlReturn_t)d->gpm_rc;
    else if (!d->gpm || (mig && !d->mig))
        rc = NVML_ERROR_NOT_SUPPORTED;
    else if (mig && find_gi(st, d->index, gi_id) == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) {
        s->filled = 1;
        s->device = d->index;
        s->gi = mig ? (int)gi_id : -1;
        s->ts = s->gr = s->sm = s->occ = 0;
        for (size_t i = 0; i < st->ngpms; i++) {
            const stub_gpm *g = &st->gpms[i];
            if (g->device == d->index && g->has_gi == mig && (!mig || g->gi == gi_id)) {
                s->ts = g->ts;
                s->gr = g->gr;
                s->sm = g->sm;
                s->occ = g->occ;
            }
        }
    }
    state_free(st);
    return rc;
}

EXPORT nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t device, nvmlGpmSample_t gpmSample)
{
    return gpm_sample("nvmlGpmSampleGet", device, 0, 0, gpmSample);
}

EXPORT nvmlReturn_t nvmlGpmMigSampleGet(nvmlDevice_t device, unsigned int gpuInstanceId, nvmlGpmSample_t gpmSample)
{
    return gpm_sample("nvmlGpmMigSampleGet", device, 1, gpuInstanceId, gpmSample);
}

/* Percent of the interval: 100 * d(counter) / d(ts), both in ns. */
static double gpm_percent(unsigned long long c1, unsigned long long c2, unsigned long long dt)
{
    return 100.0 * ((double)c2 - (double)c1) / (double)dt;
}

EXPORT nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *metricsGet)
{
    log_call("nvmlGpmMetricsGet", -1);
    if (!is_initialized())
        return NVML_ERROR_UNINITIALIZED;
    if (metricsGet == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (metricsGet->version != GPM_METRICS_GET_VERSION)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    const struct stub_gpm_sample *a = metricsGet->sample1, *b = metricsGet->sample2;
    if (!gpm_sample_ok(a) || !gpm_sample_ok(b) || !a->filled || !b->filled || a->device != b->device ||
        a->gi != b->gi || b->ts <= a->ts || metricsGet->numMetrics > GPM_METRIC_MAX)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long dt = b->ts - a->ts;
    for (unsigned i = 0; i < metricsGet->numMetrics; i++) {
        nvmlGpmMetric_t *m = &metricsGet->metrics[i];
        m->nvmlReturn = NVML_SUCCESS;
        m->value = 0.0;
        m->metricInfo.shortName = m->metricInfo.longName = m->metricInfo.unit = NULL;
        switch (m->metricId) {
        case GPM_GRAPHICS_UTIL:
            m->value = gpm_percent(a->gr, b->gr, dt);
            m->metricInfo.shortName = "gr_util";
            m->metricInfo.longName = "graphics utilization";
            m->metricInfo.unit = "%";
            break;
        case GPM_SM_UTIL:
            m->value = gpm_percent(a->sm, b->sm, dt);
            m->metricInfo.shortName = "sm_util";
            m->metricInfo.longName = "SM utilization";
            m->metricInfo.unit = "%";
            break;
        case GPM_SM_OCCUPANCY:
            m->value = gpm_percent(a->occ, b->occ, dt);
            m->metricInfo.shortName = "sm_occupancy";
            m->metricInfo.longName = "SM occupancy";
            m->metricInfo.unit = "%";
            break;
        default:
            m->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        }
    }
    return NVML_SUCCESS;
}

/* ---- not NVML: for in-process tests ----------------------------------------------------------------- */

EXPORT unsigned long long nvmlStubGetCallCount(void)
{
    return __atomic_load_n(&g_call_count, __ATOMIC_RELAXED);
}
