/*
 * flood: send prebuilt IPv4/UDP packets out of one interface at a fixed rate, through a
 * raw AF_PACKET socket (sendmmsg, qdisc bypass). The abuse harness compiles it at run time
 * (gcc -O2 -o flood flood.c) and runs it in its attacker namespace; it only ever sends on
 * the interface it is given, which the harness connects to namespaces it created.
 *
 *   flood -i IFACE -m DST_MAC -f FRAMES -r RATE -d SECONDS
 *         [-n SOURCES -s SRC_BASE] [-b FLIP_FROM] [-x SEED]
 *
 * FRAMES: records of (u16 little-endian length, IPv4 packet), at most 65536 of them, sent
 * in turn. RATE: packets per second (0: as fast as possible). -n/-s: rewrite the source
 * address of packet k to SRC_BASE + (k mod SOURCES) and its source port to one of 60000
 * (k spoofed sources in turn). -b: flip one random bit per packet in the UDP payload at or
 * after byte FLIP_FROM. Rewritten packets get a fresh IPv4 header checksum and no UDP
 * checksum (0 = none, valid for IPv4). On exit (after SECONDS, or on SIGINT/SIGTERM) prints
 * one JSON line: {"sent": ..., "elapsed_s": ..., "rate_pps": ..., "errors": ...}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_FRAMES 65536
#define MAX_PKT 1500

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static void die(const char *what) { perror(what); exit(2); }

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static uint16_t ip_checksum(const uint8_t *h, int len) {
  uint32_t sum = 0;
  for (int i = 0; i < len; i += 2) sum += (uint32_t)(h[i] << 8 | h[i + 1]);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)~sum;
}

static uint64_t rng_state = 88172645463325252ULL;
static uint64_t xorshift(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static int parse_mac(const char *s, uint8_t mac[6]) {
  unsigned v[6];
  if (sscanf(s, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6) return -1;
  for (int i = 0; i < 6; i++) mac[i] = (uint8_t)v[i];
  return 0;
}

int main(int argc, char **argv) {
  const char *ifname = NULL, *dst_mac = NULL, *frames_path = NULL, *src_base = NULL;
  double rate = 0, duration = 10;
  long sources = 0, flip_from = -1;
  int opt;
  while ((opt = getopt(argc, argv, "i:m:f:r:d:n:s:b:x:")) != -1) {
    switch (opt) {
      case 'i': ifname = optarg; break;
      case 'm': dst_mac = optarg; break;
      case 'f': frames_path = optarg; break;
      case 'r': rate = atof(optarg); break;
      case 'd': duration = atof(optarg); break;
      case 'n': sources = atol(optarg); break;
      case 's': src_base = optarg; break;
      case 'b': flip_from = atol(optarg); break;
      case 'x': rng_state ^= strtoull(optarg, NULL, 0) * 0x9E3779B97F4A7C15ULL; break;
      default: fprintf(stderr, "usage: see the comment at the top of flood.c\n"); return 2;
    }
  }
  if (!ifname || !dst_mac || !frames_path || (sources > 0 && !src_base)) {
    fprintf(stderr, "flood: -i, -m and -f are required (-s with -n)\n");
    return 2;
  }
  uint8_t dmac[6], smac[6];
  if (parse_mac(dst_mac, dmac)) { fprintf(stderr, "flood: bad MAC %s\n", dst_mac); return 2; }
  uint32_t base = 0;
  if (src_base) {
    struct in_addr a;
    if (!inet_aton(src_base, &a)) { fprintf(stderr, "flood: bad address %s\n", src_base); return 2; }
    base = ntohl(a.s_addr);
  }

  /* frames */
  FILE *f = fopen(frames_path, "rb");
  if (!f) die(frames_path);
  static uint8_t *frames[MAX_FRAMES];
  static uint16_t lens[MAX_FRAMES];
  int nframes = 0;
  uint8_t lb[2];
  while (nframes < MAX_FRAMES && fread(lb, 1, 2, f) == 2) {
    uint16_t n = (uint16_t)(lb[0] | lb[1] << 8);
    if (n < 28 || n > MAX_PKT) { fprintf(stderr, "flood: bad record length %u\n", n); return 2; }
    frames[nframes] = malloc(n);
    if (!frames[nframes] || fread(frames[nframes], 1, n, f) != n) { fprintf(stderr, "flood: short file\n"); return 2; }
    lens[nframes++] = n;
  }
  fclose(f);
  if (!nframes) { fprintf(stderr, "flood: no frames in %s\n", frames_path); return 2; }

  /* socket */
  int fd = socket(AF_PACKET, SOCK_RAW, 0);
  if (fd < 0) die("socket(AF_PACKET)");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
  if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0) die(ifname);
  int ifindex = ifr.ifr_ifindex;
  if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) die("SIOCGIFHWADDR");
  memcpy(smac, ifr.ifr_hwaddr.sa_data, 6);
  struct sockaddr_ll sll;
  memset(&sll, 0, sizeof sll);
  sll.sll_family = AF_PACKET;
  sll.sll_ifindex = ifindex;
  sll.sll_protocol = 0; /* send only */
  if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) die("bind");
  int one = 1;
  setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one); /* best effort */
  int sndbuf = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);

  static uint8_t bufs[BATCH][14 + MAX_PKT];
  struct iovec iov[BATCH];
  struct mmsghdr msgs[BATCH];
  memset(msgs, 0, sizeof msgs);
  for (int i = 0; i < BATCH; i++) {
    memcpy(bufs[i], dmac, 6);
    memcpy(bufs[i] + 6, smac, 6);
    bufs[i][12] = 0x08; bufs[i][13] = 0x00;
    iov[i].iov_base = bufs[i];
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }

  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  uint64_t sent = 0, errors = 0, k = 0;
  uint64_t total = rate > 0 ? (uint64_t)(rate * duration) : UINT64_MAX;
  double t0 = now_s(), end = t0 + duration;
  while (!stop && sent < total) {
    double t = now_s();
    if (t >= end) break;
    uint64_t n = BATCH;
    if (rate > 0) {
      uint64_t due = (uint64_t)((t - t0) * rate);
      if (due > total) due = total;
      if (due <= sent) {
        double at = t0 + (double)(sent + (BATCH < total - sent ? BATCH : total - sent)) / rate;
        if (at > end) at = end;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        double wait = at - now_s();
        if (wait > 0) {
          ts.tv_sec = (time_t)wait;
          ts.tv_nsec = (long)((wait - (double)ts.tv_sec) * 1e9);
          nanosleep(&ts, NULL);
        }
        continue;
      }
      n = due - sent;
      if (n > BATCH) n = BATCH;
    }
    for (uint64_t i = 0; i < n; i++, k++) {
      int j = (int)(k % (uint64_t)nframes);
      uint8_t *p = bufs[i] + 14;
      uint16_t len = lens[j];
      memcpy(p, frames[j], len);
      int ihl = (p[0] & 0x0f) * 4;
      int modified = 0;
      if (sources > 0) {
        uint32_t src = base + (uint32_t)(k % (uint64_t)sources);
        p[12] = src >> 24; p[13] = src >> 16; p[14] = src >> 8; p[15] = src;
        uint16_t port = (uint16_t)(1024 + (k * 7919) % 60000);
        p[ihl] = port >> 8; p[ihl + 1] = port & 0xff;
        modified = 1;
      }
      if (flip_from >= 0 && len > ihl + 8 + flip_from) {
        long span = len - (ihl + 8 + flip_from);
        uint64_t r = xorshift();
        p[ihl + 8 + flip_from + (long)(r % (uint64_t)span)] ^= (uint8_t)(1u << ((r >> 32) & 7));
        modified = 1;
      }
      if (modified) {
        p[10] = p[11] = 0;
        uint16_t c = ip_checksum(p, ihl);
        p[10] = c >> 8; p[11] = c & 0xff;
        p[ihl + 6] = p[ihl + 7] = 0;
      }
      iov[i].iov_len = 14u + len;
    }
    int done = 0;
    while (done < (int)n && !stop) {
      int r = sendmmsg(fd, msgs + done, (unsigned)((int)n - done), 0);
      if (r < 0) {
        if (errno == EINTR) continue;
        errors++;
        if (errno == ENOBUFS || errno == EAGAIN) { done++; continue; }
        die("sendmmsg");
      }
      done += r;
      sent += (uint64_t)r;
    }
  }
  double el = now_s() - t0;
  printf("{\"sent\": %llu, \"elapsed_s\": %.3f, \"rate_pps\": %.0f, \"errors\": %llu, \"frames\": %d}\n",
         (unsigned long long)sent, el, el > 0 ? (double)sent / el : 0.0,
         (unsigned long long)errors, nframes);
  return 0;
}
