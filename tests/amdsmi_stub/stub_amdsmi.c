/*
 * stub_amdsmi.c - a stand-in libamd_smi.so (AMD SMI, ROCm 7.0.2 / library 26.0.2) for tests, driven by a
 * text state file.
 *
 * Built by tests/amdsmi_stub/stub.py (gcc -shared -fPIC -O2 -Wall -Wextra -Werror -I../stub_common
 * -Wl,-soname,libamd_smi.so.26) into <dir>/lib/libamd_smi.so, where the PyPI `amdsmi` package (7.0.2) finds
 * it through $ROCM_PATH.
 *
 * That package's amdsmi_wrapper.py binds all 184 functions of the library when it is imported, so the stub
 * exports every one of them: those below are implemented; the rest answer AMDSMI_STATUS_NOT_SUPPORTED.
 * Struct layouts are the ctypes structures of amdsmi_wrapper.py 7.0.2 (generated from ROCm's amdsmi.h at
 * tag rocm-7.0.2); amdsmiStubLayout() reports them so the tests can compare with ctypes.
 *
 * The state file named by $STUB_AMDSMI_STATE is parsed again on every call, so a test can change it
 * (atomically) while a process keeps using the library.  Format: tests/amdsmi_stub/README.md.
 */
#include "stub_common.h"

#include <stdint.h>

#define EXPORT __attribute__((visibility("default")))

/* ---- AMD SMI types (amdsmi_wrapper.py 7.0.2) -------------------------------------------------------- */

typedef uint32_t amdsmi_status_t;

enum {
    AMDSMI_STATUS_SUCCESS = 0,
    AMDSMI_STATUS_INVAL = 1,
    AMDSMI_STATUS_NOT_SUPPORTED = 2,
    AMDSMI_STATUS_OUT_OF_RESOURCES = 15,
    AMDSMI_STATUS_NOT_FOUND = 31,
    AMDSMI_STATUS_NOT_INIT = 32,
    AMDSMI_STATUS_INSUFFICIENT_SIZE = 41,
};
#define AMDSMI_STATUS_UNKNOWN_ERROR 0xFFFFFFFFU

#define AMDSMI_INIT_AMD_GPUS 2U
#define AMDSMI_PROCESSOR_TYPE_AMD_GPU 1U
#define AMDSMI_MAX_STRING_LENGTH 256
#define AMDSMI_GPU_UUID_SIZE 38

typedef struct amd_handle {
    unsigned index; /* processor: the gpu line's index; socket: index of its first gpu */
} amd_handle;
typedef amd_handle *amdsmi_processor_handle;
typedef amd_handle *amdsmi_socket_handle;

typedef union { /* amdsmi_bdf_t: 8 bytes */
    struct {
        uint64_t function_number : 3;
        uint64_t device_number : 5;
        uint64_t bus_number : 8;
        uint64_t domain_number : 48;
    } bdf;
    uint64_t as_uint;
} amdsmi_bdf_t;

typedef struct { /* amdsmi_asic_info_t: 896 bytes */
    char market_name[AMDSMI_MAX_STRING_LENGTH];
    uint32_t vendor_id;
    char vendor_name[AMDSMI_MAX_STRING_LENGTH];
    uint32_t subvendor_id;
    uint64_t device_id;
    uint32_t rev_id;
    char asic_serial[AMDSMI_MAX_STRING_LENGTH];
    uint32_t oam_id;
    uint32_t num_of_compute_units;
    uint64_t target_graphics_version;
    uint32_t subsystem_id;
    uint32_t reserved[21];
} amdsmi_asic_info_t;

typedef struct { /* amdsmi_board_info_t: 1792 bytes */
    char model_number[AMDSMI_MAX_STRING_LENGTH];
    char product_serial[AMDSMI_MAX_STRING_LENGTH];
    char fru_id[AMDSMI_MAX_STRING_LENGTH];
    char product_name[AMDSMI_MAX_STRING_LENGTH];
    char manufacturer_name[AMDSMI_MAX_STRING_LENGTH];
    uint64_t reserved[64];
} amdsmi_board_info_t;

typedef struct { /* amdsmi_power_info_t: 192 bytes; socket power in W (Linux bare metal) */
    uint64_t socket_power;
    uint32_t current_socket_power;
    uint32_t average_socket_power;
    uint64_t gfx_voltage, soc_voltage, mem_voltage;
    uint32_t power_limit;
    uint64_t reserved[18];
} amdsmi_power_info_t;

typedef struct { /* amdsmi_engine_usage_t (amdsmi_get_gpu_activity): 64 bytes, percent */
    uint32_t gfx_activity, umc_activity, mm_activity;
    uint32_t reserved[13];
} amdsmi_engine_usage_t;

typedef struct { /* amdsmi_proc_info_t: 704 bytes */
    char name[AMDSMI_MAX_STRING_LENGTH];
    uint32_t pid;
    uint64_t mem; /* bytes */
    struct {
        uint64_t gfx; /* ns the process used the engine (cumulative) */
        uint64_t enc;
        uint32_t reserved[12];
    } engine_usage;
    struct {
        uint64_t gtt_mem, cpu_mem, vram_mem; /* bytes */
        uint32_t reserved[10];
    } memory_usage;
    char container_name[AMDSMI_MAX_STRING_LENGTH];
    uint32_t cu_occupancy; /* compute units in use; 0xFFFFFFFF: not available */
    uint32_t reserved[11];
} amdsmi_proc_info_t;

typedef struct { /* amdsmi_vram_usage_t: 16 bytes, MB */
    uint32_t vram_total, vram_used;
    uint32_t reserved[2];
} amdsmi_vram_usage_t;

typedef struct { /* amdsmi_kfd_info_t: 64 bytes */
    uint64_t kfd_id;
    uint32_t node_id;
    uint32_t current_partition_id;
    uint32_t reserved[12];
} amdsmi_kfd_info_t;

typedef struct { /* amdsmi_enumeration_info_t: 272 bytes */
    uint32_t drm_render, drm_card, hsa_id, hip_id;
    char hip_uuid[AMDSMI_MAX_STRING_LENGTH];
} amdsmi_enumeration_info_t;

typedef struct { /* amdsmi_driver_info_t as amdsmi_wrapper.py 7.0.2 declares it: 768 bytes */
    char driver_version[AMDSMI_MAX_STRING_LENGTH];
    char driver_date[AMDSMI_MAX_STRING_LENGTH];
    char driver_name[AMDSMI_MAX_STRING_LENGTH];
} amdsmi_driver_info_t;

typedef struct { /* amdsmi_version_t: 24 bytes */
    uint32_t major, minor, release;
    const char *build;
} amdsmi_version_t;

_Static_assert(sizeof(amdsmi_bdf_t) == 8, "amdsmi_bdf_t");
_Static_assert(sizeof(amdsmi_asic_info_t) == 896, "amdsmi_asic_info_t");
_Static_assert(offsetof(amdsmi_asic_info_t, target_graphics_version) == 800, "asic target_graphics_version");
_Static_assert(sizeof(amdsmi_board_info_t) == 1792, "amdsmi_board_info_t");
_Static_assert(sizeof(amdsmi_power_info_t) == 192, "amdsmi_power_info_t");
_Static_assert(sizeof(amdsmi_engine_usage_t) == 64, "amdsmi_engine_usage_t");
_Static_assert(sizeof(amdsmi_proc_info_t) == 704, "amdsmi_proc_info_t");
_Static_assert(offsetof(amdsmi_proc_info_t, cu_occupancy) == 656, "proc cu_occupancy");
_Static_assert(sizeof(amdsmi_vram_usage_t) == 16, "amdsmi_vram_usage_t");
_Static_assert(sizeof(amdsmi_kfd_info_t) == 64, "amdsmi_kfd_info_t");
_Static_assert(sizeof(amdsmi_enumeration_info_t) == 272, "amdsmi_enumeration_info_t");
_Static_assert(sizeof(amdsmi_driver_info_t) == 768, "amdsmi_driver_info_t");
_Static_assert(sizeof(amdsmi_version_t) == 24, "amdsmi_version_t");

/* ---- state ------------------------------------------------------------------------------------------ */

#define MAX_GPUS 64
#define STR_LEN AMDSMI_MAX_STRING_LENGTH
#define PART_LEN 80 /* the Python wrapper's buffer for partition strings (_AMDSMI_STRING_LENGTH) */

typedef struct {
    unsigned index;
    char bdf[32];
    unsigned domain, bus, dev, func;
    char uuid[STR_LEN];
    /* asic and board */
    char market_name[STR_LEN], vendor_name[STR_LEN], asic_serial[STR_LEN];
    unsigned vendor_id, subvendor_id, rev_id, oam_id, cu, subsystem_id;
    unsigned long long device_id, gfx_version;
    char product_name[STR_LEN], model_number[STR_LEN], product_serial[STR_LEN], fru_id[STR_LEN],
        manufacturer[STR_LEN];
    char driver_version[STR_LEN], driver_date[STR_LEN], driver_name[STR_LEN];
    /* energy and power */
    unsigned long long energy, energy_ts;
    double resolution;
    int has_energy_ts;
    unsigned long long socket_power;
    unsigned current_socket_power, average_socket_power, power_limit;
    unsigned long long gfx_voltage, soc_voltage, mem_voltage;
    unsigned gfx_activity, umc_activity, mm_activity;
    unsigned vram_total, vram_used;
    /* partitions and ids */
    char compute_partition[PART_LEN], memory_partition[PART_LEN];
    unsigned partition_id, node_id, render_minor, card, hsa_id, hip_id;
    unsigned long long kfd_id;
    /* failures */
    unsigned energy_rc, power_rc, activity_rc, procs_rc, partition_rc, lost_rc;
    int lost;
    unsigned delay_ms;
} stub_gpu;

static const stub_field GPU_FIELDS[] = {
    STUB_FIELD(stub_gpu, index, STUB_U32),
    STUB_STRING(stub_gpu, bdf),
    STUB_STRING(stub_gpu, uuid),
    STUB_STRING(stub_gpu, market_name),
    STUB_STRING(stub_gpu, vendor_name),
    STUB_STRING(stub_gpu, asic_serial),
    STUB_FIELD(stub_gpu, vendor_id, STUB_U32),
    STUB_FIELD(stub_gpu, subvendor_id, STUB_U32),
    STUB_FIELD(stub_gpu, rev_id, STUB_U32),
    STUB_FIELD(stub_gpu, oam_id, STUB_U32_NA),
    STUB_FIELD(stub_gpu, cu, STUB_U32_NA),
    STUB_FIELD(stub_gpu, subsystem_id, STUB_U32),
    STUB_FIELD(stub_gpu, device_id, STUB_U64),
    STUB_FIELD(stub_gpu, gfx_version, STUB_U64),
    STUB_STRING(stub_gpu, product_name),
    STUB_STRING(stub_gpu, model_number),
    STUB_STRING(stub_gpu, product_serial),
    STUB_STRING(stub_gpu, fru_id),
    STUB_STRING(stub_gpu, manufacturer),
    STUB_STRING(stub_gpu, driver_version),
    STUB_STRING(stub_gpu, driver_date),
    STUB_STRING(stub_gpu, driver_name),
    STUB_FIELD(stub_gpu, energy, STUB_U64),
    STUB_FIELD(stub_gpu, energy_ts, STUB_U64),
    STUB_FIELD(stub_gpu, resolution, STUB_DOUBLE),
    STUB_FIELD(stub_gpu, socket_power, STUB_U64),
    STUB_FIELD(stub_gpu, current_socket_power, STUB_U32),
    STUB_FIELD(stub_gpu, average_socket_power, STUB_U32),
    STUB_FIELD(stub_gpu, power_limit, STUB_U32),
    STUB_FIELD(stub_gpu, gfx_voltage, STUB_U64),
    STUB_FIELD(stub_gpu, soc_voltage, STUB_U64),
    STUB_FIELD(stub_gpu, mem_voltage, STUB_U64),
    STUB_FIELD(stub_gpu, gfx_activity, STUB_U32),
    STUB_FIELD(stub_gpu, umc_activity, STUB_U32),
    STUB_FIELD(stub_gpu, mm_activity, STUB_U32),
    STUB_FIELD(stub_gpu, vram_total, STUB_U32),
    STUB_FIELD(stub_gpu, vram_used, STUB_U32),
    STUB_STRING(stub_gpu, compute_partition),
    STUB_STRING(stub_gpu, memory_partition),
    STUB_FIELD(stub_gpu, partition_id, STUB_U32),
    STUB_FIELD(stub_gpu, node_id, STUB_U32),
    STUB_FIELD(stub_gpu, render_minor, STUB_U32),
    STUB_FIELD(stub_gpu, card, STUB_U32),
    STUB_FIELD(stub_gpu, hsa_id, STUB_U32),
    STUB_FIELD(stub_gpu, hip_id, STUB_U32),
    STUB_FIELD(stub_gpu, kfd_id, STUB_U64),
    STUB_FIELD(stub_gpu, energy_rc, STUB_RC),
    STUB_FIELD(stub_gpu, power_rc, STUB_RC),
    STUB_FIELD(stub_gpu, activity_rc, STUB_RC),
    STUB_FIELD(stub_gpu, procs_rc, STUB_RC),
    STUB_FIELD(stub_gpu, partition_rc, STUB_RC),
    STUB_FIELD(stub_gpu, lost_rc, STUB_RC),
    STUB_FIELD(stub_gpu, lost, STUB_BOOL),
    STUB_FIELD(stub_gpu, delay_ms, STUB_U32),
};
#define NFIELDS(t) (sizeof t / sizeof t[0])
_Static_assert(NFIELDS(GPU_FIELDS) <= 64, "seen is a 64-bit mask");

typedef struct {
    unsigned gpu, pid;
    char name[STR_LEN], container[STR_LEN];
    unsigned long long mem, gfx, enc, gtt, cpu, vram;
    unsigned cu_occupancy;
} stub_proc;

static const stub_field PROC_FIELDS[] = {
    STUB_FIELD(stub_proc, gpu, STUB_U32),    STUB_FIELD(stub_proc, pid, STUB_U32),
    STUB_STRING(stub_proc, name),            STUB_STRING(stub_proc, container),
    STUB_FIELD(stub_proc, mem, STUB_U64),    STUB_FIELD(stub_proc, gfx, STUB_U64),
    STUB_FIELD(stub_proc, enc, STUB_U64),    STUB_FIELD(stub_proc, gtt, STUB_U64),
    STUB_FIELD(stub_proc, cpu, STUB_U64),    STUB_FIELD(stub_proc, vram, STUB_U64),
    STUB_FIELD(stub_proc, cu_occupancy, STUB_U32_NA),
};

typedef struct {
    unsigned init_rc;
    unsigned major, minor, release;
    int error;
    stub_gpu gpu[MAX_GPUS];
    unsigned ngpu;
    stub_proc *procs;
    size_t nprocs, procs_cap;
} stub_state;

static const stub_field INIT_FIELDS[] = {STUB_FIELD_AS(stub_state, "rc", init_rc, STUB_RC)};
static const stub_field LIB_FIELDS[] = {
    STUB_FIELD(stub_state, major, STUB_U32),
    STUB_FIELD(stub_state, minor, STUB_U32),
    STUB_FIELD(stub_state, release, STUB_U32),
};

/*
 * Handles: each amdsmi_init() that starts the library allocates fresh handle arrays (never freed, so an
 * old address is never reused); only handles of the current arrays are valid, as the real library forgets
 * its processors at amdsmi_shut_down().
 */
static amd_handle *volatile g_procs;
static amd_handle *volatile g_sockets;
static int g_initialized;
static uint64_t g_init_flags;
static unsigned long long g_call_count;

static void log_call(const char *sym, long gpu)
{
    __atomic_add_fetch(&g_call_count, 1, __ATOMIC_RELAXED);
    stub_log_call("STUB_AMDSMI_CALL_LOG", sym, gpu);
}

/* ---- parsing ---------------------------------------------------------------------------------------- */

static stub_gpu *find_gpu(stub_state *st, unsigned index)
{
    for (unsigned i = 0; i < st->ngpu; i++)
        if (st->gpu[i].index == index)
            return &st->gpu[i];
    return NULL;
}

/* "DDDD:BB:DD.F" (hex); also the short "BB:DD.F". */
static int parse_bdf(stub_gpu *g)
{
    unsigned domain = 0, bus, dev, func;
    char tail;
    if (sscanf(g->bdf, "%x:%x:%x.%x%c", &domain, &bus, &dev, &func, &tail) != 4 &&
        (domain = 0, sscanf(g->bdf, "%x:%x.%x%c", &bus, &dev, &func, &tail) != 3))
        return -1;
    if (bus > 0xFF || dev > 0x1F || func > 7)
        return -1;
    g->domain = domain;
    g->bus = bus;
    g->dev = dev;
    g->func = func;
    return 0;
}

#define HAS(key) (seen & stub_field_bit(GPU_FIELDS, NFIELDS(GPU_FIELDS), key))
#define DEFAULT_STR(field, ...)                                                                                         \
    do {                                                                                                                \
        if (!HAS(#field))                                                                                               \
            snprintf(g.field, sizeof g.field, __VA_ARGS__);                                                             \
    } while (0)
#define DEFAULT_NUM(field, value)                                                                                       \
    do {                                                                                                                \
        if (!HAS(#field))                                                                                               \
            g.field = (value);                                                                                          \
    } while (0)

static void parse_gpu(stub_state *st, stub_reader *r, unsigned lineno, char **tok, int ntok)
{
    stub_gpu g;
    unsigned long long seen;
    memset(&g, 0, sizeof g);
    if (stub_parse_fields(r, lineno, tok, ntok, GPU_FIELDS, NFIELDS(GPU_FIELDS), &g, &seen) != 0)
        return;
    if (!HAS("index")) {
        stub_fail(r, lineno, "gpu needs index=", NULL);
        return;
    }
    if (g.index >= MAX_GPUS || st->ngpu >= MAX_GPUS) {
        stub_fail(r, lineno, "gpu index out of range (max 63)", NULL);
        return;
    }
    if (find_gpu(st, g.index) != NULL) {
        stub_fail(r, lineno, "duplicate gpu index", NULL);
        return;
    }
    DEFAULT_STR(bdf, "0000:%02x:00.0", 0x10 + g.index);
    if (parse_bdf(&g) != 0) {
        stub_fail(r, lineno, "bad bdf (want DDDD:BB:DD.F in hex)", g.bdf);
        return;
    }
    DEFAULT_STR(uuid, "%04x74a1-0000-1000-8000-%012x", 0x5f00 + g.index, g.index);
    DEFAULT_STR(market_name, "AMD Instinct MI300X");
    DEFAULT_STR(vendor_name, "Advanced Micro Devices Inc. [AMD/ATI]");
    DEFAULT_STR(asic_serial, "%016llX", 0xA5A5000000000000ULL + g.index);
    DEFAULT_NUM(vendor_id, 0x1002);
    DEFAULT_NUM(subvendor_id, 0x1002);
    DEFAULT_NUM(device_id, 0x74a1);
    DEFAULT_NUM(subsystem_id, 0x74a1);
    DEFAULT_NUM(oam_id, g.index);
    DEFAULT_NUM(cu, 304);
    DEFAULT_NUM(gfx_version, 0x942);
    DEFAULT_STR(product_name, "%s", g.market_name);
    DEFAULT_STR(manufacturer, "AMD");
    DEFAULT_STR(driver_version, "6.10.5");
    DEFAULT_STR(driver_name, "amdgpu");
    DEFAULT_NUM(resolution, 15.3);
    g.has_energy_ts = HAS("energy_ts") != 0;
    DEFAULT_STR(compute_partition, "SPX");
    DEFAULT_STR(memory_partition, "NPS1");
    DEFAULT_NUM(node_id, g.index + 1);
    DEFAULT_NUM(kfd_id, 0x1000ULL + g.index);
    DEFAULT_NUM(render_minor, 128 + g.index);
    DEFAULT_NUM(card, g.index);
    DEFAULT_NUM(hsa_id, g.index + 1);
    DEFAULT_NUM(hip_id, g.index);
    DEFAULT_NUM(vram_total, 196592);
    DEFAULT_NUM(lost_rc, AMDSMI_STATUS_NOT_FOUND);
    st->gpu[st->ngpu++] = g;
}

static void parse_line(void *ctx, stub_reader *r, unsigned lineno, char **tok, int ntok)
{
    stub_state *st = ctx;
    unsigned long long seen;
    if (strcmp(tok[0], "init") == 0) {
        stub_parse_fields(r, lineno, tok, ntok, INIT_FIELDS, NFIELDS(INIT_FIELDS), st, &seen);
    } else if (strcmp(tok[0], "lib") == 0) {
        stub_parse_fields(r, lineno, tok, ntok, LIB_FIELDS, NFIELDS(LIB_FIELDS), st, &seen);
    } else if (strcmp(tok[0], "gpu") == 0) {
        parse_gpu(st, r, lineno, tok, ntok);
    } else if (strcmp(tok[0], "proc") == 0) {
        stub_proc p = {.cu_occupancy = ~0U};
        if (stub_parse_fields(r, lineno, tok, ntok, PROC_FIELDS, NFIELDS(PROC_FIELDS), &p, &seen) != 0)
            return;
        if (!(seen & stub_field_bit(PROC_FIELDS, NFIELDS(PROC_FIELDS), "gpu")) ||
            !(seen & stub_field_bit(PROC_FIELDS, NFIELDS(PROC_FIELDS), "pid"))) {
            stub_fail(r, lineno, "proc needs gpu= and pid=", NULL);
            return;
        }
        if (!(seen & stub_field_bit(PROC_FIELDS, NFIELDS(PROC_FIELDS), "mem")))
            p.mem = p.vram + p.gtt + p.cpu;
        if (stub_grow((void **)&st->procs, &st->procs_cap, st->nprocs, sizeof p) != 0) {
            stub_fail(r, lineno, "out of memory", NULL);
            return;
        }
        st->procs[st->nprocs++] = p;
    } else {
        stub_fail(r, lineno, "unknown line kind", tok[0]);
    }
}

static void state_free(stub_state *st)
{
    if (st != NULL)
        free(st->procs);
    free(st);
}

/* Returns NULL only when out of memory; check st->error for a broken file. */
static stub_state *state_load(void)
{
    stub_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    st->major = 26; /* AMD SMI library 26.0.2 ships with ROCm 7.0.2 */
    st->minor = 0;
    st->release = 2;
    stub_reader r = {.prog = "stub_amdsmi", .file = getenv("STUB_AMDSMI_STATE"), .error = 0};
    stub_read_state(&r, parse_line, st);
    for (size_t i = 0; i < st->nprocs && !r.error; i++)
        if (find_gpu(st, st->procs[i].gpu) == NULL)
            stub_fail(&r, 0, "proc refers to a gpu that is not declared", NULL);
    st->error = r.error;
    return st;
}

/* ---- call prologues --------------------------------------------------------------------------------- */

static int is_initialized(void)
{
    return __atomic_load_n(&g_initialized, __ATOMIC_SEQ_CST);
}

/* The index a handle of the current handle array stands for, or -1. */
static long handle_index(const amd_handle *h, amd_handle *volatile *array)
{
    uintptr_t p = (uintptr_t)h, base = (uintptr_t)__atomic_load_n(array, __ATOMIC_SEQ_CST);
    if (base == 0 || p < base || p >= base + MAX_GPUS * sizeof(amd_handle) || (p - base) % sizeof(amd_handle) != 0)
        return -1;
    return (long)((p - base) / sizeof(amd_handle));
}

static int gpus_enabled(void)
{
    return (__atomic_load_n(&g_init_flags, __ATOMIC_SEQ_CST) & AMDSMI_INIT_AMD_GPUS) != 0;
}

/* Calls that are not about one processor.  On SUCCESS *out holds a state the caller frees. */
static amdsmi_status_t begin_system(const char *sym, stub_state **out)
{
    log_call(sym, -1);
    *out = NULL;
    if (!is_initialized())
        return AMDSMI_STATUS_NOT_INIT;
    stub_state *st = state_load();
    if (st == NULL || st->error) {
        state_free(st);
        return AMDSMI_STATUS_UNKNOWN_ERROR;
    }
    if (!gpus_enabled())
        st->ngpu = 0; /* initialised without AMDSMI_INIT_AMD_GPUS: no GPU is enumerated */
    *out = st;
    return AMDSMI_STATUS_SUCCESS;
}

/*
 * Prologue of a per-processor call.  In this order: initialised (NOT_INIT), a handle of this init
 * (INVAL for NULL, NOT_FOUND otherwise), state readable, the GPU still in the file (NOT_FOUND), delay_ms,
 * lost (lost_rc).
 */
static amdsmi_status_t begin_gpu(const char *sym, amdsmi_processor_handle h, stub_state **st_out,
                                 const stub_gpu **gpu_out)
{
    long idx = handle_index(h, &g_procs);
    log_call(sym, idx);
    *st_out = NULL;
    *gpu_out = NULL;
    if (!is_initialized())
        return AMDSMI_STATUS_NOT_INIT;
    if (h == NULL)
        return AMDSMI_STATUS_INVAL;
    if (idx < 0)
        return AMDSMI_STATUS_NOT_FOUND;
    stub_state *st = state_load();
    if (st == NULL || st->error) {
        state_free(st);
        return AMDSMI_STATUS_UNKNOWN_ERROR;
    }
    const stub_gpu *g = find_gpu(st, (unsigned)idx);
    amdsmi_status_t rc = AMDSMI_STATUS_SUCCESS;
    if (g == NULL || !gpus_enabled()) {
        rc = AMDSMI_STATUS_NOT_FOUND;
    } else {
        if (g->delay_ms)
            stub_sleep_ms(g->delay_ms);
        if (g->lost)
            rc = g->lost_rc;
    }
    if (rc != AMDSMI_STATUS_SUCCESS) {
        state_free(st);
        return rc;
    }
    *st_out = st;
    *gpu_out = g;
    return AMDSMI_STATUS_SUCCESS;
}

static void copy_bounded(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src);
}

/* ---- init ------------------------------------------------------------------------------------------- */

EXPORT amdsmi_status_t amdsmi_init(uint64_t init_flags)
{
    log_call("amdsmi_init", -1);
    if (is_initialized())
        return AMDSMI_STATUS_SUCCESS; /* the real library is not reference counted either */
    stub_state *st = state_load();
    if (st == NULL)
        return AMDSMI_STATUS_UNKNOWN_ERROR;
    amdsmi_status_t rc = st->error ? AMDSMI_STATUS_UNKNOWN_ERROR : st->init_rc;
    state_free(st);
    if (rc != AMDSMI_STATUS_SUCCESS)
        return rc;
    amd_handle *procs = calloc(MAX_GPUS, sizeof *procs), *sockets = calloc(MAX_GPUS, sizeof *sockets);
    if (procs == NULL || sockets == NULL) {
        free(procs);
        free(sockets);
        return AMDSMI_STATUS_OUT_OF_RESOURCES;
    }
    for (unsigned i = 0; i < MAX_GPUS; i++)
        procs[i].index = sockets[i].index = i;
    __atomic_store_n(&g_procs, procs, __ATOMIC_SEQ_CST);
    __atomic_store_n(&g_sockets, sockets, __ATOMIC_SEQ_CST);
    __atomic_store_n(&g_init_flags, init_flags, __ATOMIC_SEQ_CST);
    __atomic_store_n(&g_initialized, 1, __ATOMIC_SEQ_CST);
    return AMDSMI_STATUS_SUCCESS;
}

EXPORT amdsmi_status_t amdsmi_shut_down(void)
{
    log_call("amdsmi_shut_down", -1);
    __atomic_store_n(&g_initialized, 0, __ATOMIC_SEQ_CST);
    return AMDSMI_STATUS_SUCCESS; /* also when not initialised, as the real library */
}

EXPORT amdsmi_status_t amdsmi_get_lib_version(amdsmi_version_t *version)
{
    stub_state *st;
    amdsmi_status_t rc = begin_system("amdsmi_get_lib_version", &st);
    if (rc != AMDSMI_STATUS_SUCCESS)
        return rc;
    if (version == NULL) {
        rc = AMDSMI_STATUS_INVAL;
    } else {
        static const char build[] = "stub";
        version->major = st->major;
        version->minor = st->minor;
        version->release = st->release;
        version->build = build;
    }
    state_free(st);
    return rc;
}

/* ---- sockets and processors ------------------------------------------------------------------------- */

/* The socket of a GPU is its domain:bus:device (function stripped), as AMD SMI names it. */
static void socket_id(const stub_gpu *g, char *out, size_t size)
{
    snprintf(out, size, "%04X:%02X:%02X", g->domain, g->bus, g->dev);
}

static int same_socket(const stub_gpu *a, const stub_gpu *b)
{
    return a->domain == b->domain && a->bus == b->bus && a->dev == b->dev;
}

/* The GPU (in file order) that first names a socket stands for the socket. */
static int is_first_of_socket(const stub_state *st, unsigned i)
{
    for (unsigned j = 0; j < i; j++)
        if (same_socket(&st->gpu[j], &st->gpu[i]))
            return 0;
    return 1;
}

/* Two-call protocol: a NULL array asks for the count; otherwise up to *count entries are written. */
EXPORT amdsmi_status_t amdsmi_get_socket_handles(uint32_t *socket_count, amdsmi_socket_handle *socket_handles)
{
    stub_state *st;
    amdsmi_status_t rc = begin_system("amdsmi_get_socket_handles", &st);
    if (rc != AMDSMI_STATUS_SUCCESS)
        return rc;
    if (socket_count == NULL) {
        state_free(st);
        return AMDSMI_STATUS_INVAL;
    }
    amd_handle *sockets = __atomic_load_n(&g_sockets, __ATOMIC_SEQ_CST);
    uint32_t n = 0;
    for (unsigned i = 0; i < st->ngpu; i++) {
        if (!is_first_of_socket(st, i))
            continue;
        if (socket_handles != NULL && n < *socket_count)
            socket_handles[n] = &sockets[st->gpu[i].index];
        n++;
    }
    *socket_count = socket_handles == NULL || n < *socket_count ? n : *socket_count;
    state_free(st);
    return AMDSMI_STATUS_SUCCESS;
}

/* The socket's representative GPU, or NULL when the handle is stale or its GPU left the file. */
static const stub_gpu *socket_gpu(stub_state *st, amdsmi_socket_handle h)
{
    long idx = handle_index(h, &g_sockets);
    return idx < 0 ? NULL : find_gpu(st, (unsigned)idx);
}

EXPORT amdsmi_status_t amdsmi_get_socket_info(amdsmi_socket_handle socket_handle, size_t len, char *name)
{
    stub_state *st;
    amdsmi_status_t rc = begin_system("amdsmi_get_socket_info", &st);
    if (rc != AMDSMI_STATUS_SUCCESS)
        return rc;
    const stub_gpu *g = socket_gpu(st, socket_handle);
    char id[32];
    if (name == NULL || socket_handle == NULL)
        rc = AMDSMI_STATUS_INVAL;
    else if (g == NULL)
        rc = AMDSMI_STATUS_NOT_FOUND;
    else if (socket_id(g, id, sizeof id), strlen(id) + 1 > len)
        rc = AMDSMI_STATUS_INSUFFICIENT_SIZE;
    else
        memcpy(name, id, strlen(id) + 1);
    state_free(st);
    return rc;
}

EXPORT amdsmi_status_t amdsmi_get_processor_handles(amdsmi_socket_handle socket_handle, uint32_t *processor_count,
                                                    amdsmi_processor_handle *processor_handles)
{
    stub_state *st;
    amdsmi_status_t rc = begin_system("amdsmi_get_processor_handles", &st);
    if (rc != AMDSMI_STATUS_SUCCESS)
        return rc;
    const stub_gpu *first = socket_gpu(st, socket_handle);
    if (processor_count == NULL || socket_handle == NULL) {
        rc = AMDSMI_STATUS_INVAL;
    } else if (first == NULL) {
        rc = AMDSMI_STATUS_NOT_FOUND;
    } else {
        amd_handle *procs = __atomic_load_n(&g_procs, __ATOMIC_SEQ_CST);
        uint32_t n = 0;
        for (unsigned i = 0; i < st->ngpu; i++) {
            if (!same_socket(first, &st->gpu[i]))
                continue;
            if (processor_handles != NULL && n < *processor_count)
                processor_handles[n] = &procs[st->gpu[i].index];
            n++;
        }
        *processor_count = processor_handles == NULL || n < *processor_count ? n : *processor_count;
    }
    state_free(st);
    return rc;
}

EXPORT amdsmi_status_t amdsmi_get_processor_handle_from_bdf(amdsmi_bdf_t bdf, amdsmi_processor_handle *handle)
{
    stub_state *st;
    amdsmi_status_t rc = begin_system("amdsmi_get_processor_handle_from_bdf", &st);
    if (rc != AMDSMI_STATUS_SUCCESS)
        return rc;
    if (handle == NULL) {
        rc = AMDSMI_STATUS_INVAL;
    } else {
        rc = AMDSMI_STATUS_NOT_FOUND;
        for (unsigned i = 0; i < st->ngpu; i++) {
            const stub_gpu *g = &st->gpu[i];
            if (g->domain == bdf.bdf.domain_number && g->bus == bdf.bdf.bus_number &&
                g->dev == bdf.bdf.device_number && g->func == bdf.bdf.function_number) {
                *handle = &__atomic_load_n(&g_procs, __ATOMIC_SEQ_CST)[g->index];
                rc = AMDSMI_STATUS_SUCCESS;
                break;
            }
        }
    }
    state_free(st);
    return rc;
}

/* ---- per-GPU identity ------------------------------------------------------------------------------- */

/* Declares st and g, runs the prologue, returns its failure; the body then sets rc; END frees. */
#define BEGIN_GPU(sym, h)                                                                                               \
    stub_state *st;                                                                                                     \
    const stub_gpu *g;                                                                                                  \
    amdsmi_status_t rc = begin_gpu(sym, h, &st, &g);                                                                    \
    if (rc != AMDSMI_STATUS_SUCCESS)                                                                                    \
        return rc;
#define END_GPU()                                                                                                       \
    state_free(st);                                                                                                     \
    return rc;

EXPORT amdsmi_status_t amdsmi_get_processor_type(amdsmi_processor_handle h, uint32_t *type)
{
    BEGIN_GPU("amdsmi_get_processor_type", h)
    if (type == NULL)
        rc = AMDSMI_STATUS_INVAL;
    else
        *type = AMDSMI_PROCESSOR_TYPE_AMD_GPU;
    END_GPU()
}

EXPORT amdsmi_status_t amdsmi_get_gpu_device_bdf(amdsmi_processor_handle h, amdsmi_bdf_t *bdf)
{
    BEGIN_GPU("amdsmi_get_gpu_device_bdf", h)
    if (bdf == NULL) {
        rc = AMDSMI_STATUS_INVAL;
    } else {
        bdf->as_uint = 0;
        bdf->bdf.domain_number = g->domain;
        bdf->bdf.bus_number = g->bus;
        bdf->bdf.device_number = g->dev;
        bdf->bdf.function_number = g->func;
    }
    END_GPU()
}

EXPORT amdsmi_status_t amdsmi_get_gpu_device_uuid(amdsmi_processor_handle h, uint32_t *uuid_length, char *uuid)
{
    BEGIN_GPU("amdsmi_get_gpu_device_uuid", h)
    size_t need = strlen(g->uuid) + 1;
    if (uuid_length == NULL || uuid == NULL) {
        rc = AMDSMI_STATUS_INVAL;
    } else if (*uuid_length < need) {
        *uuid_length = (uint32_t)need;
        rc = AMDSMI_STATUS_INSUFFICIENT_SIZE;
    } else {
        memcpy(uuid, g->uuid, need);
        *uuid_length = (uint32_t)need;
    }
    END_GPU()
}

EXPORT amdsmi_status_t amdsmi_get_gpu_asic_info(amdsmi_processor_handle h, amdsmi_asic_info_t *info)
{
    BEGIN_GPU("amdsmi_get_gpu_asic_info", h)
    if (info == NULL) {
        rc = AMDSMI_STATUS_INVAL;
    } else {
        memset(info, 0, sizeof *info);
        copy_bounded(info->market_name, sizeof info->market_name, g->market_name);
        info->vendor_id = g->vendor_id;
        copy_bounded(info->vendor_name, sizeof info->vendor_name, g->vendor_name);
        info->subvendor_id = g->subvendor_id;
        info->device_id = g->device_id;
        info->rev_id = g->rev_id;
        copy_bounded(info->asic_serial, sizeof info->asic_serial, g->asic_serial);
        info->oam_id = g->oam_id;
        info->num_of_compute_units = g->cu;
        info->target_graphics_version = g->gfx_version;
        info->subsystem_id = g->subsystem_id;
    }
    END_GPU()
}

EXPORT amdsmi_status_t amdsmi_get_gpu_board_info(amdsmi_processor_handle h, amdsmi_board_info_t *info)
{
    BEGIN_GPU("amdsmi_get_gpu_board_info", h)
    if (info == NULL) {
        rc = AMDSMI_STATUS_INVAL;
    } else {
        memset(info, 0, sizeof *info);
        copy_bounded(info->model_number, sizeof info->model_number, g->model_number);
        copy_bounded(info->product_serial, sizeof info->product_serial, g->product_serial);
        copy_bounded(info->fru_id, sizeof info->fru_id, g->fru_id);
        copy_bounded(info->product_name, sizeof info->product_name, g->product_name);
        copy_bounded(info->manufacturer_name, sizeof info->manufacturer_name, g->manufacturer);
    }
    END_GPU()
}

EXPORT amdsmi_status_t amdsmi_get_gpu_driver_info(amdsmi_processor_handle h, amdsmi_driver_info_t *info)
{
    BEGIN_GPU("amdsmi_get_gpu_driver_info", h)
    if (info == NULL) {
        rc = AMDSMI_STATUS_INVAL;
    } else {
        memset(info, 0, sizeof *info);
        copy_bounded(info->driver_version, sizeof info->driver_version, g->driver_version);
        copy_bounded(info->driver_date, sizeof info->driver_date, g->driver_date);
        copy_bounded(info->driver_name, sizeof info->driver_name, g->driver_name);
    }
    END_GPU()
}

EXPORT amdsmi_status_t amdsmi_get_gpu_kfd_info(amdsmi_processor_handle h, amdsmi_kfd_info_t *info)
{
    BEGIN_GPU("amdsmi_get_gpu_kfd_info", h)
    if (info == NULL) {
        rc = AMDSMI_STATUS_INVAL;
    } else {
        memset(info, 0, sizeof *info);
        info->kfd_id = g->kfd_id;
        info->node_id = g->node_id;
        info->current_partition_id = g->partition_id;
    }
    END_GPU()
}

EXPORT amdsmi_status_t amdsmi_get_gpu_enumeration_info(amdsmi_processor_handle h, amdsmi_enumeration_info_t *info)
{
    BEGIN_GPU("amdsmi_get_gpu_enumeration_info", h)
    if (info == NULL) {
        rc = AMDSMI_STATUS_INVAL;
    } else {
        memset(info, 0, sizeof *info);
        info->drm_render = g->render_minor;
        info->drm_card = g->card;
        info->hsa_id = g->hsa_id;
        info->hip_id = g->hip_id;
        snprintf(info->hip_uuid, sizeof info->hip_uuid, "GPU-%.16s", g->asic_serial);
    }
    END_GPU()
}

/* ---- energy, power, activity, memory ---------------------------------------------------------------- */

EXPORT amdsmi_status_t amdsmi_get_energy_count(amdsmi_processor_handle h, uint64_t *energy_accumulator,
                                               float *counter_resolution, uint64_t *timestamp)
{
    BEGIN_GPU("amdsmi_get_energy_count", h)
    if (energy_accumulator == NULL || counter_resolution == NULL || timestamp == NULL) {
        rc = AMDSMI_STATUS_INVAL;
    } else if (g->energy_rc != AMDSMI_STATUS_SUCCESS) {
        rc = g->energy_rc;
    } else {
        *energy_accumulator = g->energy;
        *counter_resolution = (float)g->resolution;
        if (g->has_energy_ts) {
            *timestamp = g->energy_ts;
        } else { /* the driver stamps its metrics table in ns */
            struct timespec ts;
            clock_gettime(CLOCK_BOOTTIME, &ts);
            *timestamp = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
        }
    }
    END_GPU()
}

EXPORT amdsmi_status_t amdsmi_get_power_info(amdsmi_processor_handle h, amdsmi_power_info_t *info)
{
    BEGIN_GPU("amdsmi_get_power_info", h)
    if (info == NULL) {
        rc = AMDSMI_STATUS_INVAL;
    } else if (g->power_rc != AMDSMI_STATUS_SUCCESS) {
        rc = g->power_rc;
    } else {
        memset(info, 0, sizeof *info);
        info->socket_power = g->socket_power;
        info->current_socket_power = g->current_socket_power;
        info->average_socket_power = g->average_socket_power;
        info->gfx_voltage = g->gfx_voltage;
        info->soc_voltage = g->soc_voltage;
        info->mem_voltage = g->mem_voltage;
        info->power_limit = g->power_limit;
    }
    END_GPU()
}

EXPORT amdsmi_status_t amdsmi_get_gpu_activity(amdsmi_processor_handle h, amdsmi_engine_usage_t *info)
{
    BEGIN_GPU("amdsmi_get_gpu_activity", h)
    if (info == NULL) {
        rc = AMDSMI_STATUS_INVAL;
    } else if (g->activity_rc != AMDSMI_STATUS_SUCCESS) {
        rc = g->activity_rc;
    } else {
        memset(info, 0, sizeof *info);
        info->gfx_activity = g->gfx_activity;
        info->umc_activity = g->umc_activity;
        info->mm_activity = g->mm_activity;
    }
    END_GPU()
}

EXPORT amdsmi_status_t amdsmi_get_gpu_vram_usage(amdsmi_processor_handle h, amdsmi_vram_usage_t *info)
{
    BEGIN_GPU("amdsmi_get_gpu_vram_usage", h)
    if (info == NULL) {
        rc = AMDSMI_STATUS_INVAL;
    } else {
        memset(info, 0, sizeof *info);
        info->vram_total = g->vram_total;
        info->vram_used = g->vram_used;
    }
    END_GPU()
}

/* ---- processes -------------------------------------------------------------------------------------- */

/*
 * *max_processes in: the list's capacity (0: just count).  Out: the number of processes.  When they do not
 * fit, the list is filled to capacity and the call returns AMDSMI_STATUS_OUT_OF_RESOURCES (amdsmi.h).
 */
EXPORT amdsmi_status_t amdsmi_get_gpu_process_list(amdsmi_processor_handle h, uint32_t *max_processes,
                                                   amdsmi_proc_info_t *list)
{
    BEGIN_GPU("amdsmi_get_gpu_process_list", h)
    if (max_processes == NULL || (*max_processes > 0 && list == NULL)) {
        rc = AMDSMI_STATUS_INVAL;
    } else if (g->procs_rc != AMDSMI_STATUS_SUCCESS) {
        rc = g->procs_rc;
    } else {
        uint32_t cap = *max_processes, n = 0;
        for (size_t i = 0; i < st->nprocs; i++) {
            const stub_proc *p = &st->procs[i];
            if (p->gpu != g->index)
                continue;
            if (n < cap) {
                amdsmi_proc_info_t *e = &list[n];
                memset(e, 0, sizeof *e);
                copy_bounded(e->name, sizeof e->name, p->name);
                e->pid = p->pid;
                e->mem = p->mem;
                e->engine_usage.gfx = p->gfx;
                e->engine_usage.enc = p->enc;
                e->memory_usage.gtt_mem = p->gtt;
                e->memory_usage.cpu_mem = p->cpu;
                e->memory_usage.vram_mem = p->vram;
                copy_bounded(e->container_name, sizeof e->container_name, p->container);
                e->cu_occupancy = p->cu_occupancy;
            }
            n++;
        }
        *max_processes = n;
        if (cap > 0 && n > cap)
            rc = AMDSMI_STATUS_OUT_OF_RESOURCES;
    }
    END_GPU()
}

/* ---- partitions ------------------------------------------------------------------------------------- */

static amdsmi_status_t partition_string(const stub_gpu *g, const char *value, char *out, uint32_t len)
{
    if (out == NULL || len == 0)
        return AMDSMI_STATUS_INVAL;
    if (g->partition_rc != AMDSMI_STATUS_SUCCESS)
        return g->partition_rc;
    if (strlen(value) + 1 > len)
        return AMDSMI_STATUS_INSUFFICIENT_SIZE;
    memcpy(out, value, strlen(value) + 1);
    return AMDSMI_STATUS_SUCCESS;
}

EXPORT amdsmi_status_t amdsmi_get_gpu_compute_partition(amdsmi_processor_handle h, char *compute_partition,
                                                        uint32_t len)
{
    BEGIN_GPU("amdsmi_get_gpu_compute_partition", h)
    rc = partition_string(g, g->compute_partition, compute_partition, len);
    END_GPU()
}

EXPORT amdsmi_status_t amdsmi_get_gpu_memory_partition(amdsmi_processor_handle h, char *memory_partition,
                                                       uint32_t len)
{
    BEGIN_GPU("amdsmi_get_gpu_memory_partition", h)
    rc = partition_string(g, g->memory_partition, memory_partition, len);
    END_GPU()
}

/* ---- everything else the Python package binds: AMDSMI_STATUS_NOT_SUPPORTED --------------------------- */

#define NOT_SUPPORTED(name)                                                                                             \
    EXPORT amdsmi_status_t name(void)                                                                                   \
    {                                                                                                                   \
        log_call(#name, -1);                                                                                            \
        return is_initialized() ? AMDSMI_STATUS_NOT_SUPPORTED : AMDSMI_STATUS_NOT_INIT;                                 \
    }

/* void in the real library: nothing to free here */
EXPORT void amdsmi_free_name_value_pairs(void *p)
{
    (void)p;
    log_call("amdsmi_free_name_value_pairs", -1);
}

NOT_SUPPORTED(amdsmi_clean_gpu_local_data)
NOT_SUPPORTED(amdsmi_cpu_apb_disable)
NOT_SUPPORTED(amdsmi_cpu_apb_enable)
NOT_SUPPORTED(amdsmi_first_online_core_on_cpu_socket)
NOT_SUPPORTED(amdsmi_get_afids_from_cper)
NOT_SUPPORTED(amdsmi_get_clk_freq)
NOT_SUPPORTED(amdsmi_get_clock_info)
NOT_SUPPORTED(amdsmi_get_cpu_affinity_with_scope)
NOT_SUPPORTED(amdsmi_get_cpu_cclk_limit)
NOT_SUPPORTED(amdsmi_get_cpu_core_boostlimit)
NOT_SUPPORTED(amdsmi_get_cpu_core_current_freq_limit)
NOT_SUPPORTED(amdsmi_get_cpu_core_energy)
NOT_SUPPORTED(amdsmi_get_cpu_cores_per_socket)
NOT_SUPPORTED(amdsmi_get_cpu_current_io_bandwidth)
NOT_SUPPORTED(amdsmi_get_cpu_current_xgmi_bw)
NOT_SUPPORTED(amdsmi_get_cpu_ddr_bw)
NOT_SUPPORTED(amdsmi_get_cpu_dimm_power_consumption)
NOT_SUPPORTED(amdsmi_get_cpu_dimm_temp_range_and_refresh_rate)
NOT_SUPPORTED(amdsmi_get_cpu_dimm_thermal_sensor)
NOT_SUPPORTED(amdsmi_get_cpu_family)
NOT_SUPPORTED(amdsmi_get_cpu_fclk_mclk)
NOT_SUPPORTED(amdsmi_get_cpu_handles)
NOT_SUPPORTED(amdsmi_get_cpu_hsmp_driver_version)
NOT_SUPPORTED(amdsmi_get_cpu_hsmp_proto_ver)
NOT_SUPPORTED(amdsmi_get_cpu_model)
NOT_SUPPORTED(amdsmi_get_cpu_model_name)
NOT_SUPPORTED(amdsmi_get_cpu_prochot_status)
NOT_SUPPORTED(amdsmi_get_cpu_pwr_svi_telemetry_all_rails)
NOT_SUPPORTED(amdsmi_get_cpu_smu_fw_version)
NOT_SUPPORTED(amdsmi_get_cpu_socket_c0_residency)
NOT_SUPPORTED(amdsmi_get_cpu_socket_count)
NOT_SUPPORTED(amdsmi_get_cpu_socket_current_active_freq_limit)
NOT_SUPPORTED(amdsmi_get_cpu_socket_energy)
NOT_SUPPORTED(amdsmi_get_cpu_socket_freq_range)
NOT_SUPPORTED(amdsmi_get_cpu_socket_lclk_dpm_level)
NOT_SUPPORTED(amdsmi_get_cpu_socket_power)
NOT_SUPPORTED(amdsmi_get_cpu_socket_power_cap)
NOT_SUPPORTED(amdsmi_get_cpu_socket_power_cap_max)
NOT_SUPPORTED(amdsmi_get_cpu_socket_temperature)
NOT_SUPPORTED(amdsmi_get_cpucore_handles)
NOT_SUPPORTED(amdsmi_get_esmi_err_msg)
NOT_SUPPORTED(amdsmi_get_fw_info)
NOT_SUPPORTED(amdsmi_get_gpu_accelerator_partition_profile)
NOT_SUPPORTED(amdsmi_get_gpu_accelerator_partition_profile_config)
NOT_SUPPORTED(amdsmi_get_gpu_available_counters)
NOT_SUPPORTED(amdsmi_get_gpu_bad_page_info)
NOT_SUPPORTED(amdsmi_get_gpu_bad_page_threshold)
NOT_SUPPORTED(amdsmi_get_gpu_bdf_id)
NOT_SUPPORTED(amdsmi_get_gpu_busy_percent)
NOT_SUPPORTED(amdsmi_get_gpu_cache_info)
NOT_SUPPORTED(amdsmi_get_gpu_compute_process_gpus)
NOT_SUPPORTED(amdsmi_get_gpu_compute_process_info)
NOT_SUPPORTED(amdsmi_get_gpu_compute_process_info_by_pid)
NOT_SUPPORTED(amdsmi_get_gpu_cper_entries)
NOT_SUPPORTED(amdsmi_get_gpu_ecc_count)
NOT_SUPPORTED(amdsmi_get_gpu_ecc_enabled)
NOT_SUPPORTED(amdsmi_get_gpu_ecc_status)
NOT_SUPPORTED(amdsmi_get_gpu_event_notification)
NOT_SUPPORTED(amdsmi_get_gpu_fan_rpms)
NOT_SUPPORTED(amdsmi_get_gpu_fan_speed)
NOT_SUPPORTED(amdsmi_get_gpu_fan_speed_max)
NOT_SUPPORTED(amdsmi_get_gpu_id)
NOT_SUPPORTED(amdsmi_get_gpu_mem_overdrive_level)
NOT_SUPPORTED(amdsmi_get_gpu_memory_partition_config)
NOT_SUPPORTED(amdsmi_get_gpu_memory_reserved_pages)
NOT_SUPPORTED(amdsmi_get_gpu_memory_total)
NOT_SUPPORTED(amdsmi_get_gpu_memory_usage)
NOT_SUPPORTED(amdsmi_get_gpu_metrics_header_info)
NOT_SUPPORTED(amdsmi_get_gpu_metrics_info)
NOT_SUPPORTED(amdsmi_get_gpu_od_volt_curve_regions)
NOT_SUPPORTED(amdsmi_get_gpu_od_volt_info)
NOT_SUPPORTED(amdsmi_get_gpu_overdrive_level)
NOT_SUPPORTED(amdsmi_get_gpu_pci_bandwidth)
NOT_SUPPORTED(amdsmi_get_gpu_pci_replay_counter)
NOT_SUPPORTED(amdsmi_get_gpu_pci_throughput)
NOT_SUPPORTED(amdsmi_get_gpu_perf_level)
NOT_SUPPORTED(amdsmi_get_gpu_pm_metrics_info)
NOT_SUPPORTED(amdsmi_get_gpu_power_profile_presets)
NOT_SUPPORTED(amdsmi_get_gpu_process_isolation)
NOT_SUPPORTED(amdsmi_get_gpu_ras_block_features_enabled)
NOT_SUPPORTED(amdsmi_get_gpu_ras_feature_info)
NOT_SUPPORTED(amdsmi_get_gpu_reg_table_info)
NOT_SUPPORTED(amdsmi_get_gpu_revision)
NOT_SUPPORTED(amdsmi_get_gpu_subsystem_id)
NOT_SUPPORTED(amdsmi_get_gpu_subsystem_name)
NOT_SUPPORTED(amdsmi_get_gpu_topo_numa_affinity)
NOT_SUPPORTED(amdsmi_get_gpu_total_ecc_count)
NOT_SUPPORTED(amdsmi_get_gpu_vbios_info)
NOT_SUPPORTED(amdsmi_get_gpu_vendor_name)
NOT_SUPPORTED(amdsmi_get_gpu_virtualization_mode)
NOT_SUPPORTED(amdsmi_get_gpu_volt_metric)
NOT_SUPPORTED(amdsmi_get_gpu_vram_info)
NOT_SUPPORTED(amdsmi_get_gpu_vram_vendor)
NOT_SUPPORTED(amdsmi_get_gpu_xcd_counter)
NOT_SUPPORTED(amdsmi_get_gpu_xgmi_link_status)
NOT_SUPPORTED(amdsmi_get_hsmp_metrics_table)
NOT_SUPPORTED(amdsmi_get_hsmp_metrics_table_version)
NOT_SUPPORTED(amdsmi_get_link_metrics)
NOT_SUPPORTED(amdsmi_get_link_topology_nearest)
NOT_SUPPORTED(amdsmi_get_minmax_bandwidth_between_processors)
NOT_SUPPORTED(amdsmi_get_pcie_info)
NOT_SUPPORTED(amdsmi_get_power_cap_info)
NOT_SUPPORTED(amdsmi_get_processor_count_from_handles)
NOT_SUPPORTED(amdsmi_get_processor_handles_by_type)
NOT_SUPPORTED(amdsmi_get_processor_info)
NOT_SUPPORTED(amdsmi_get_soc_pstate)
NOT_SUPPORTED(amdsmi_get_temp_metric)
NOT_SUPPORTED(amdsmi_get_threads_per_core)
NOT_SUPPORTED(amdsmi_get_utilization_count)
NOT_SUPPORTED(amdsmi_get_violation_status)
NOT_SUPPORTED(amdsmi_get_xgmi_info)
NOT_SUPPORTED(amdsmi_get_xgmi_plpd)
NOT_SUPPORTED(amdsmi_gpu_control_counter)
NOT_SUPPORTED(amdsmi_gpu_counter_group_supported)
NOT_SUPPORTED(amdsmi_gpu_create_counter)
NOT_SUPPORTED(amdsmi_gpu_destroy_counter)
NOT_SUPPORTED(amdsmi_gpu_driver_reload)
NOT_SUPPORTED(amdsmi_gpu_read_counter)
NOT_SUPPORTED(amdsmi_gpu_validate_ras_eeprom)
NOT_SUPPORTED(amdsmi_gpu_xgmi_error_status)
NOT_SUPPORTED(amdsmi_init_gpu_event_notification)
NOT_SUPPORTED(amdsmi_is_P2P_accessible)
NOT_SUPPORTED(amdsmi_is_gpu_power_management_enabled)
NOT_SUPPORTED(amdsmi_reset_gpu)
NOT_SUPPORTED(amdsmi_reset_gpu_fan)
NOT_SUPPORTED(amdsmi_reset_gpu_xgmi_error)
NOT_SUPPORTED(amdsmi_set_clk_freq)
NOT_SUPPORTED(amdsmi_set_cpu_core_boostlimit)
NOT_SUPPORTED(amdsmi_set_cpu_df_pstate_range)
NOT_SUPPORTED(amdsmi_set_cpu_gmi3_link_width_range)
NOT_SUPPORTED(amdsmi_set_cpu_pcie_link_rate)
NOT_SUPPORTED(amdsmi_set_cpu_pwr_efficiency_mode)
NOT_SUPPORTED(amdsmi_set_cpu_socket_boostlimit)
NOT_SUPPORTED(amdsmi_set_cpu_socket_lclk_dpm_level)
NOT_SUPPORTED(amdsmi_set_cpu_socket_power_cap)
NOT_SUPPORTED(amdsmi_set_cpu_xgmi_width)
NOT_SUPPORTED(amdsmi_set_gpu_accelerator_partition_profile)
NOT_SUPPORTED(amdsmi_set_gpu_clk_limit)
NOT_SUPPORTED(amdsmi_set_gpu_clk_range)
NOT_SUPPORTED(amdsmi_set_gpu_compute_partition)
NOT_SUPPORTED(amdsmi_set_gpu_event_notification_mask)
NOT_SUPPORTED(amdsmi_set_gpu_fan_speed)
NOT_SUPPORTED(amdsmi_set_gpu_memory_partition)
NOT_SUPPORTED(amdsmi_set_gpu_memory_partition_mode)
NOT_SUPPORTED(amdsmi_set_gpu_od_clk_info)
NOT_SUPPORTED(amdsmi_set_gpu_od_volt_info)
NOT_SUPPORTED(amdsmi_set_gpu_overdrive_level)
NOT_SUPPORTED(amdsmi_set_gpu_pci_bandwidth)
NOT_SUPPORTED(amdsmi_set_gpu_perf_determinism_mode)
NOT_SUPPORTED(amdsmi_set_gpu_perf_level)
NOT_SUPPORTED(amdsmi_set_gpu_power_profile)
NOT_SUPPORTED(amdsmi_set_gpu_process_isolation)
NOT_SUPPORTED(amdsmi_set_power_cap)
NOT_SUPPORTED(amdsmi_set_soc_pstate)
NOT_SUPPORTED(amdsmi_set_xgmi_plpd)
NOT_SUPPORTED(amdsmi_status_code_to_string)
NOT_SUPPORTED(amdsmi_stop_gpu_event_notification)
NOT_SUPPORTED(amdsmi_topo_get_link_type)
NOT_SUPPORTED(amdsmi_topo_get_link_weight)
NOT_SUPPORTED(amdsmi_topo_get_numa_node_number)
NOT_SUPPORTED(amdsmi_topo_get_p2p_status)

/* ---- not AMD SMI: for tests ------------------------------------------------------------------------- */

EXPORT unsigned long long amdsmiStubGetCallCount(void)
{
    return __atomic_load_n(&g_call_count, __ATOMIC_RELAXED);
}

/* sizeof / offsetof of the structures above, by "struct" or "struct.member" (SIZE_MAX: unknown name). */
EXPORT size_t amdsmiStubLayout(const char *name)
{
#define SIZE(t)                                                                                                         \
    if (strcmp(name, #t) == 0)                                                                                          \
        return sizeof(t);
#define OFFSET(t, m)                                                                                                    \
    if (strcmp(name, #t "." #m) == 0)                                                                                   \
        return offsetof(t, m);
    if (name == NULL)
        return SIZE_MAX;
    SIZE(amdsmi_bdf_t)
    SIZE(amdsmi_asic_info_t)
    OFFSET(amdsmi_asic_info_t, vendor_id)
    OFFSET(amdsmi_asic_info_t, device_id)
    OFFSET(amdsmi_asic_info_t, asic_serial)
    OFFSET(amdsmi_asic_info_t, num_of_compute_units)
    OFFSET(amdsmi_asic_info_t, target_graphics_version)
    OFFSET(amdsmi_asic_info_t, subsystem_id)
    SIZE(amdsmi_board_info_t)
    OFFSET(amdsmi_board_info_t, product_name)
    OFFSET(amdsmi_board_info_t, manufacturer_name)
    SIZE(amdsmi_power_info_t)
    OFFSET(amdsmi_power_info_t, current_socket_power)
    OFFSET(amdsmi_power_info_t, average_socket_power)
    OFFSET(amdsmi_power_info_t, power_limit)
    SIZE(amdsmi_engine_usage_t)
    SIZE(amdsmi_proc_info_t)
    OFFSET(amdsmi_proc_info_t, pid)
    OFFSET(amdsmi_proc_info_t, mem)
    OFFSET(amdsmi_proc_info_t, engine_usage)
    OFFSET(amdsmi_proc_info_t, memory_usage)
    OFFSET(amdsmi_proc_info_t, container_name)
    OFFSET(amdsmi_proc_info_t, cu_occupancy)
    SIZE(amdsmi_vram_usage_t)
    SIZE(amdsmi_kfd_info_t)
    OFFSET(amdsmi_kfd_info_t, current_partition_id)
    SIZE(amdsmi_enumeration_info_t)
    SIZE(amdsmi_driver_info_t)
    SIZE(amdsmi_version_t)
    OFFSET(amdsmi_version_t, build)
    return SIZE_MAX;
#undef SIZE
#undef OFFSET
}
