/*
 * blkbench: timed raw reads of a block device, run inside the QEMU guest
 * by tests/benches/vhost_guest.rs (built there with `gcc -O2 -static`).
 *
 *   blkbench calibrate               (on the host) the TSC rate, in kHz
 *   blkbench DEV seq KHZ             read the whole device in 1 MiB requests
 *   blkbench DEV rand N SEED KHZ     N random 4 KiB reads at 4 KiB-aligned
 *                                    offsets from a splitmix64 stream
 *
 * Every read is O_DIRECT, so the guest's page cache never answers and
 * each request reaches the backend. Only the pread calls are timed; the
 * checksum of the data read is computed between them, untimed, so that
 * the host can check the bytes against the raw image.
 *
 * Time comes from the TSC, converted with the host's rate KHZ: under
 * TCG the guest kernel marks its TSC unstable and falls back to a jiffies
 * clock (4 ms steps, and ticks lost while the emulator is busy), while
 * QEMU's emulated RDTSC returns the host's TSC.
 *
 * One line is printed per run:
 *
 *   BLKBENCH seq size=S bytes=B requests=R ns=T sum=H
 *   BLKBENCH rand size=S bytes=B requests=R ns=T p50_ns=P p99_ns=Q sum=H
 *
 * sum: each 8-byte little-endian word w of the data, in read order:
 * h = (h ^ w) * 0x100000001b3, from h = 0xcbf29ce484222325.
 * Errors go to stdout as `BLKBENCH error ...` (the console is all the
 * host sees) and the exit status is 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#define SEQ_REQ (1u << 20)
#define RAND_REQ 4096u

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* TSC ticks per millisecond, set from the command line. */
static uint64_t tsc_khz;

static uint64_t ticks(void) { return __rdtsc(); }

static uint64_t ticks_to_ns(uint64_t t) {
    return (uint64_t)((unsigned __int128)t * 1000000u / tsc_khz);
}

/* The median of five 100 ms windows of TSC against CLOCK_MONOTONIC. */
static int calibrate(void) {
    uint64_t khz[5];
    for (int i = 0; i < 5; i++) {
        uint64_t n0 = mono_ns(), t0 = ticks();
        struct timespec d = {0, 100000000};
        nanosleep(&d, NULL);
        uint64_t n1 = mono_ns(), t1 = ticks();
        khz[i] = (t1 - t0) * 1000000u / (n1 - n0);
    }
    for (int i = 0; i < 5; i++)
        for (int j = i + 1; j < 5; j++)
            if (khz[j] < khz[i]) {
                uint64_t x = khz[i];
                khz[i] = khz[j];
                khz[j] = x;
            }
    printf("BLKBENCH tsc_khz=%llu\n", (unsigned long long)khz[2]);
    return 0;
}

static uint64_t mix(uint64_t h, const unsigned char *p, size_t len) {
    for (size_t i = 0; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
    }
    return h;
}

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int fail(const char *what, uint64_t offset) {
    printf("BLKBENCH error %s at offset %llu: %s\n", what, (unsigned long long)offset,
           strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "calibrate") == 0)
        return calibrate();
    if (argc < 4 || (strcmp(argv[2], "seq") == 0 && argc != 4) ||
        (strcmp(argv[2], "rand") == 0 && argc != 6) ||
        (strcmp(argv[2], "seq") != 0 && strcmp(argv[2], "rand") != 0)) {
        printf("BLKBENCH error usage: blkbench calibrate | blkbench DEV seq KHZ | "
               "blkbench DEV rand N SEED KHZ\n");
        return 1;
    }
    tsc_khz = strtoull(argv[argc - 1], NULL, 10);
    if (tsc_khz == 0) {
        printf("BLKBENCH error bad TSC rate %s\n", argv[argc - 1]);
        return 1;
    }
    int fd = open(argv[1], O_RDONLY | O_DIRECT);
    if (fd < 0)
        return fail("open", 0);
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) != 0)
        return fail("BLKGETSIZE64", 0);
    unsigned char *buf;
    if (posix_memalign((void **)&buf, 4096, SEQ_REQ) != 0)
        return fail("posix_memalign", 0);
    uint64_t h = 0xcbf29ce484222325ull, ns = 0, bytes = 0, requests = 0;

    if (strcmp(argv[2], "seq") == 0) {
        for (uint64_t off = 0; off < size;) {
            size_t want = size - off < SEQ_REQ ? (size_t)(size - off) : SEQ_REQ;
            uint64_t t0 = ticks();
            ssize_t n = pread(fd, buf, want, (off_t)off);
            ns += ticks_to_ns(ticks() - t0);
            if (n <= 0)
                return fail("pread", off);
            h = mix(h, buf, (size_t)n);
            off += (uint64_t)n;
            bytes += (uint64_t)n;
            requests++;
        }
        printf("BLKBENCH seq size=%llu bytes=%llu requests=%llu ns=%llu sum=%016llx\n",
               (unsigned long long)size, (unsigned long long)bytes,
               (unsigned long long)requests, (unsigned long long)ns, (unsigned long long)h);
        return 0;
    }

    long count = strtol(argv[3], NULL, 10);
    uint64_t state = strtoull(argv[4], NULL, 10);
    uint64_t blocks = size / RAND_REQ;
    if (count <= 0 || blocks == 0) {
        printf("BLKBENCH error bad count %ld or device of %llu bytes\n", count,
               (unsigned long long)size);
        return 1;
    }
    uint64_t *lat = calloc((size_t)count, sizeof *lat);
    if (lat == NULL)
        return fail("calloc", 0);
    for (long i = 0; i < count; i++) {
        uint64_t off = (splitmix64(&state) % blocks) * RAND_REQ;
        uint64_t t0 = ticks();
        ssize_t n = pread(fd, buf, RAND_REQ, (off_t)off);
        lat[i] = ticks_to_ns(ticks() - t0);
        if (n != (ssize_t)RAND_REQ)
            return fail("pread", off);
        ns += lat[i];
        h = mix(h, buf, RAND_REQ);
        bytes += RAND_REQ;
        requests++;
    }
    qsort(lat, (size_t)count, sizeof *lat, cmp_u64);
    printf("BLKBENCH rand size=%llu bytes=%llu requests=%llu ns=%llu p50_ns=%llu p99_ns=%llu "
           "sum=%016llx\n",
           (unsigned long long)size, (unsigned long long)bytes, (unsigned long long)requests,
           (unsigned long long)ns, (unsigned long long)lat[(count - 1) / 2],
           (unsigned long long)lat[(count * 99 - 1) / 100], (unsigned long long)h);
    return 0;
}
