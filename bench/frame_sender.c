/* Raw frames into an interface as fast as asked: the traffic source of bench/p4rt_write.py's
 * PacketIn runs (built with gcc, run in the namespace of the interface).
 *
 * usage: frame_sender IFNAME FRAMES_FILE SECONDS RATE
 *   FRAMES_FILE: records of a 2-byte big-endian length and the frame, sent in order, cycling
 *   RATE: frames per second (0: as fast as sendmmsg goes), paced in bursts of 64
 * Prints {"frames_sent": N, "seconds": S} on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BURST 64

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s IFNAME FRAMES_FILE SECONDS RATE\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 2;
    }
    size_t cap = 1024, n = 0;
    struct iovec *frames = malloc(cap * sizeof(*frames));
    unsigned char len_be[2];
    while (fread(len_be, 1, 2, f) == 2) {
        size_t len = (size_t)len_be[0] << 8 | len_be[1];
        unsigned char *buf = malloc(len);
        if (fread(buf, 1, len, f) != len) {
            fprintf(stderr, "%s: a frame is cut short\n", argv[2]);
            return 2;
        }
        if (n == cap)
            frames = realloc(frames, (cap *= 2) * sizeof(*frames));
        frames[n].iov_base = buf;
        frames[n].iov_len = len;
        n++;
    }
    fclose(f);
    if (n == 0) {
        fprintf(stderr, "%s holds no frame\n", argv[2]);
        return 2;
    }
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    struct sockaddr_ll addr = {.sll_family = AF_PACKET, .sll_ifindex = if_nametoindex(argv[1])};
    if (!addr.sll_ifindex || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        perror(argv[1]);
        return 1;
    }
    double seconds = atof(argv[3]), rate = atof(argv[4]);
    struct mmsghdr msgs[BURST];
    memset(msgs, 0, sizeof(msgs));
    unsigned long long sent = 0;
    size_t next = 0;
    double start = now_s(), end = start + seconds;
    while (now_s() < end) {
        if (rate > 0) {
            double wait = start + sent / rate - now_s();
            if (wait > 0) {
                struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
        for (int i = 0; i < BURST; i++) {
            msgs[i].msg_hdr.msg_iov = &frames[(next + i) % n];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int k = sendmmsg(fd, msgs, BURST, 0);
        if (k > 0) {
            sent += k;
            next = (next + k) % n;
        }
    }
    printf("{\"frames_sent\": %llu, \"seconds\": %.3f}\n", sent, now_s() - start);
    return 0;
}
