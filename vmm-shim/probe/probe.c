/* The probe guest: a freestanding x86-64 program that drives one
   virtio-mmio (version 2) block device by itself and replays an access trace
   through real descriptor chains (header / data / status), timestamping each
   completion with the TSC. The VMM enters it in 64-bit mode with RDI pointing
   at the parameter block; it never returns. */
#include "probe.h"

#define VIRTIO_MAGIC 0x74726976u

/* virtio-mmio v2 register offsets */
#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEV_FEATURES 0x010
#define R_DEV_FEATURES_SEL 0x014
#define R_DRV_FEATURES 0x020
#define R_DRV_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_STATUS 0x070
#define R_QUEUE_DESC_LO 0x080
#define R_QUEUE_DESC_HI 0x084
#define R_QUEUE_DRIVER_LO 0x090
#define R_QUEUE_DRIVER_HI 0x094
#define R_QUEUE_DEVICE_LO 0x0a0
#define R_QUEUE_DEVICE_HI 0x0a4
#define R_CONFIG 0x100

#define S_ACK 1u
#define S_DRIVER 2u
#define S_DRIVER_OK 4u
#define S_FEATURES_OK 8u
#define S_FAILED 128u

#define F_SIZE_MAX (1ull << 1)
#define F_SEG_MAX (1ull << 2)
#define F_RO (1ull << 5)
#define F_BLK_SIZE (1ull << 6)
#define F_FLUSH (1ull << 9)
#define F_VERSION_1 (1ull << 32)

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VIRTIO_BLK_T_IN 0

struct desc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };
struct used_elem { uint32_t id; uint32_t len; };
struct blk_hdr { uint32_t type; uint32_t reserved; uint64_t sector; };

static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void mfence(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline uint64_t rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi) :: "memory");
    return ((uint64_t)hi << 32) | lo;
}
static inline uint32_t rd32(uint64_t a) { return *(volatile uint32_t *)a; }
static inline void wr32(uint64_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline uint64_t rd64(uint64_t a) { return *(volatile uint64_t *)a; }
static inline void wr64(uint64_t a, uint64_t v) { *(volatile uint64_t *)a = v; }

static volatile struct probe_params *P;

static void console(const char *s) {
    while (*s) wr32(P->control_base + 8, (uint8_t)*s++);
}

static __attribute__((noreturn)) void finish(uint64_t status, uint64_t detail) {
    P->detail = detail;
    P->tsc_end = rdtsc();
    barrier();
    P->status = status;
    mfence();
    /* The doorbell: the VMM stops the vCPU on this write. */
    wr64(P->control_base, status);
    for (;;) __asm__ volatile("cli; hlt");
}

void __attribute__((section(".text.start"), noreturn, used)) _start(struct probe_params *params) {
    P = params;
    P->tsc_start = rdtsc();
    if (P->magic != PROBE_MAGIC || P->abi != PROBE_ABI) finish(PROBE_ERR_MAGIC, P->abi);
    uint64_t m = P->mmio_base;
    console("probe: start\n");

    if (rd32(m + R_MAGIC) != VIRTIO_MAGIC) finish(PROBE_ERR_DEVICE, rd32(m + R_MAGIC));
    if (rd32(m + R_VERSION) != 2) finish(PROBE_ERR_DEVICE, 0x100 | rd32(m + R_VERSION));
    if (rd32(m + R_DEVICE_ID) != 2) finish(PROBE_ERR_DEVICE, 0x200 | rd32(m + R_DEVICE_ID));

    /* v2 initialisation sequence (virtio 1.x, 3.1.1) */
    wr32(m + R_STATUS, 0);
    wr32(m + R_STATUS, S_ACK);
    wr32(m + R_STATUS, S_ACK | S_DRIVER);
    wr32(m + R_DEV_FEATURES_SEL, 0);
    uint64_t dev = rd32(m + R_DEV_FEATURES);
    wr32(m + R_DEV_FEATURES_SEL, 1);
    dev |= (uint64_t)rd32(m + R_DEV_FEATURES) << 32;
    P->device_features = dev;
    if (!(dev & F_VERSION_1)) finish(PROBE_ERR_FEATURES, dev);
    uint64_t drv = dev & (F_VERSION_1 | F_SIZE_MAX | F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH);
    P->driver_features = drv;
    wr32(m + R_DRV_FEATURES_SEL, 0);
    wr32(m + R_DRV_FEATURES, (uint32_t)drv);
    wr32(m + R_DRV_FEATURES_SEL, 1);
    wr32(m + R_DRV_FEATURES, (uint32_t)(drv >> 32));
    wr32(m + R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if (!(rd32(m + R_STATUS) & S_FEATURES_OK)) {
        wr32(m + R_STATUS, S_FAILED);
        finish(PROBE_ERR_FEATURES, dev);
    }

    wr32(m + R_QUEUE_SEL, 0);
    if (rd32(m + R_QUEUE_READY) != 0) finish(PROBE_ERR_QUEUE, 1);
    uint32_t qmax = rd32(m + R_QUEUE_NUM_MAX);
    uint32_t qn = P->queue_size;
    if (qmax == 0) finish(PROBE_ERR_QUEUE, 0);
    if (qn > qmax) qn = qmax;
    P->queue_size_used = qn;
    uint64_t qdesc = P->queue_base, qavail = qdesc + 0x1000, qused = qdesc + 0x2000;
    wr32(m + R_QUEUE_NUM, qn);
    wr32(m + R_QUEUE_DESC_LO, (uint32_t)qdesc);
    wr32(m + R_QUEUE_DESC_HI, (uint32_t)(qdesc >> 32));
    wr32(m + R_QUEUE_DRIVER_LO, (uint32_t)qavail);
    wr32(m + R_QUEUE_DRIVER_HI, (uint32_t)(qavail >> 32));
    wr32(m + R_QUEUE_DEVICE_LO, (uint32_t)qused);
    wr32(m + R_QUEUE_DEVICE_HI, (uint32_t)(qused >> 32));
    wr32(m + R_QUEUE_READY, 1);

    P->capacity = (uint64_t)rd32(m + R_CONFIG) | ((uint64_t)rd32(m + R_CONFIG + 4) << 32);
    uint32_t seg = P->seg_bytes;
    if ((drv & F_SIZE_MAX) && rd32(m + R_CONFIG + 8) != 0 && rd32(m + R_CONFIG + 8) < seg)
        seg = rd32(m + R_CONFIG + 8) & ~511u;
    uint32_t maxsegs = P->max_segs;
    if ((drv & F_SEG_MAX) && rd32(m + R_CONFIG + 12) != 0 && rd32(m + R_CONFIG + 12) < maxsegs)
        maxsegs = rd32(m + R_CONFIG + 12);
    if (seg == 0 || maxsegs == 0) finish(PROBE_ERR_QUEUE, 2);

    wr32(m + R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    P->tsc_ready = rdtsc();
    console("probe: device ready\n");

    /* Descriptor slots: slot k owns descriptors [k*per, (k+1)*per). */
    uint32_t per = 2 + maxsegs;
    uint32_t depth = P->depth;
    if (depth == 0) depth = 1;
    if (depth > qn / per) depth = qn / per;
    if (depth == 0) finish(PROBE_ERR_QUEUE, 3);

    volatile struct desc *d = (volatile struct desc *)qdesc;
    volatile uint16_t *avail_idx = (volatile uint16_t *)(qavail + 2);
    volatile uint16_t *avail_ring = (volatile uint16_t *)(qavail + 4);
    volatile uint16_t *used_idx = (volatile uint16_t *)(qused + 2);
    volatile struct used_elem *used_ring = (volatile struct used_elem *)(qused + 4);
    volatile struct trace_entry *tr = (volatile struct trace_entry *)P->trace_addr;
    volatile struct trace_result *res = (volatile struct trace_result *)P->result_addr;
    /* When polling, ask the device not to signal completions at all
       (VRING_AVAIL_F_NO_INTERRUPT); when halting, the signal is what wakes us. */
    *(volatile uint16_t *)qavail = P->wait_mode == WAIT_POLL ? 1 : 0;

    uint64_t slot_entry[64];
    uint32_t free_slots[64], nfree = 0;
    if (depth > 64) depth = 64;
    for (uint32_t k = 0; k < depth; k++) free_slots[nfree++] = depth - 1 - k;

    uint64_t n = P->trace_count, next = 0, done = 0;
    uint16_t aidx = 0, uidx = 0;
    while (done < n) {
        int submitted = 0;
        while (nfree > 0 && next < n) {
            uint64_t off = tr[next].offset;
            uint32_t len = tr[next].len;
            uint64_t buf = tr[next].buf;
            if ((off & 511) || (len & 511) || len == 0 || (len + seg - 1) / seg > maxsegs)
                finish(PROBE_ERR_TRACE, next);
            uint32_t k = free_slots[--nfree];
            slot_entry[k] = next;
            uint32_t base = k * per;
            volatile struct blk_hdr *h = (volatile struct blk_hdr *)(P->hdr_base + 32 * k);
            volatile uint8_t *st = (volatile uint8_t *)(P->hdr_base + 32 * k + 16);
            h->type = VIRTIO_BLK_T_IN;
            h->reserved = 0;
            h->sector = off >> 9;
            *st = 0xff;
            d[base].addr = (uint64_t)h;
            d[base].len = 16;
            d[base].flags = VRING_DESC_F_NEXT;
            d[base].next = base + 1;
            uint32_t i = base + 1, left = len;
            while (left > 0) {
                uint32_t l = left < seg ? left : seg;
                d[i].addr = buf + (len - left);
                d[i].len = l;
                d[i].flags = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT;
                d[i].next = i + 1;
                left -= l;
                i++;
            }
            d[i].addr = (uint64_t)st;
            d[i].len = 1;
            d[i].flags = VRING_DESC_F_WRITE;
            d[i].next = 0;
            res[next].status = 0xff;
            res[next].tsc_submit = rdtsc();
            avail_ring[aidx % qn] = base;
            aidx++;
            next++;
            submitted = 1;
        }
        if (submitted) {
            barrier();
            *avail_idx = aidx;
            mfence();
            wr32(m + R_QUEUE_NOTIFY, 0);
        }
        /* wait for at least one completion */
        while (*used_idx == uidx) {
            if (P->wait_mode == WAIT_HLT)
                __asm__ volatile("hlt" ::: "memory");
            else
                __asm__ volatile("pause" ::: "memory");
        }
        uint64_t now = rdtsc();
        barrier();
        uint16_t end = *used_idx;
        while (uidx != end) {
            uint32_t id = used_ring[uidx % qn].id;
            uint32_t ulen = used_ring[uidx % qn].len;
            if (id % per != 0 || id / per >= depth) finish(PROBE_ERR_USED, id);
            uint32_t k = id / per;
            uint64_t e = slot_entry[k];
            res[e].tsc_complete = now;
            res[e].used_len = ulen;
            res[e].status = *(volatile uint8_t *)(P->hdr_base + 32 * k + 16);
            free_slots[nfree++] = k;
            uidx++;
            done++;
            P->completed = done;
        }
    }
    console("probe: trace done\n");
    finish(PROBE_DONE, 0);
}
