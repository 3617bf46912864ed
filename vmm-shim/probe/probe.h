/* Shared layout between the probe guest and the VMM (vmm-shim/src/probe.rs).
   Keep the two in step: the VMM checks PROBE_ABI at run time. */
#ifndef PROBE_H
#define PROBE_H
#include <stdint.h>

#define PROBE_MAGIC 0x45424f52504d4d56ull /* "VMMPROBE" little-endian */
#define PROBE_ABI 1

enum probe_status {
    PROBE_RUNNING = 0,
    PROBE_DONE = 1,
    PROBE_ERR_MAGIC = 2,       /* bad params block */
    PROBE_ERR_DEVICE = 3,      /* not a virtio-mmio v2 block device */
    PROBE_ERR_FEATURES = 4,    /* device refused FEATURES_OK */
    PROBE_ERR_QUEUE = 5,       /* queue 0 unavailable or already live */
    PROBE_ERR_TRACE = 6,       /* a trace entry the probe cannot express */
    PROBE_ERR_USED = 7,        /* the device returned an unknown id */
};

enum wait_mode { WAIT_POLL = 0, WAIT_HLT = 1 };

struct probe_params {
    uint64_t magic;
    uint32_t abi;
    uint32_t wait_mode;      /* enum wait_mode */
    uint64_t mmio_base;      /* virtio-mmio registers */
    uint64_t control_base;   /* VMM control page: +0 done doorbell, +8 console byte */
    uint64_t queue_base;     /* desc table; avail at +0x1000; used at +0x2000 */
    uint64_t hdr_base;       /* per-slot request header (16 B) + status (at +16) in 32 B */
    uint32_t queue_size;     /* wanted queue size (clamped to QueueNumMax) */
    uint32_t depth;          /* requests in flight at most */
    uint32_t seg_bytes;      /* bytes per data descriptor at most */
    uint32_t max_segs;       /* data descriptors per request at most */
    uint64_t trace_addr;     /* struct trace_entry[trace_count] */
    uint64_t trace_count;
    uint64_t result_addr;    /* struct trace_result[trace_count] */
    /* written by the guest */
    uint64_t status;         /* enum probe_status */
    uint64_t detail;         /* what failed (register value, index) */
    uint64_t device_features;
    uint64_t driver_features;
    uint64_t capacity;       /* in 512-byte sectors, from the config space */
    uint64_t queue_size_used;
    uint64_t tsc_start;      /* first instruction */
    uint64_t tsc_ready;      /* DRIVER_OK written */
    uint64_t tsc_end;        /* last completion seen */
    uint64_t completed;
};

struct trace_entry {
    uint64_t offset;         /* bytes, multiple of 512 */
    uint64_t buf;            /* guest-physical destination */
    uint32_t len;            /* bytes, multiple of 512 */
    uint32_t flags;          /* reserved, 0 */
};

struct trace_result {
    uint64_t tsc_submit;
    uint64_t tsc_complete;
    uint32_t status;         /* virtio-blk status byte, 0xff until completed */
    uint32_t used_len;
};
/* The VMM (src/probe.rs) writes and reads these at fixed offsets. */
_Static_assert(sizeof(struct probe_params) == 168, "probe_params layout");
_Static_assert(sizeof(struct trace_entry) == 24, "trace_entry layout");
_Static_assert(sizeof(struct trace_result) == 24, "trace_result layout");
#endif
