// splice-relay LISTEN_PORT UPSTREAM_PORT: connects to 127.0.0.1:UPSTREAM_PORT, prints "ready", accepts one
// connection on 127.0.0.1:LISTEN_PORT and moves its bytes to the upstream with splice(2) through a pipe (no copy
// into user space) until its end. The cheapest relay a process can be: bench/relay-floor.sh measures what it costs.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static int tcp(int port, int listening)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (!listening) {
        if (connect(fd, (void *)&a, sizeof a)) { perror("connect"); exit(1); }
        return fd;
    }
    if (bind(fd, (void *)&a, sizeof a) || listen(fd, 1)) { perror("listen"); exit(1); }
    printf("ready\n");
    fflush(stdout);
    int c = accept(fd, NULL, NULL);
    close(fd);
    return c;
}

int main(int argc, char **argv)
{
    if (argc != 3) { fprintf(stderr, "usage: splice-relay LISTEN_PORT UPSTREAM_PORT\n"); return 2; }
    int up = tcp(atoi(argv[2]), 0);
    int client = tcp(atoi(argv[1]), 1);
    int p[2];
    if (pipe(p)) { perror("pipe"); return 1; }
    for (;;) {
        ssize_t n = splice(client, NULL, p[1], NULL, 1 << 20, SPLICE_F_MOVE);
        if (n < 0) { perror("splice"); return 1; }
        if (n == 0) break;
        while (n > 0) {
            ssize_t m = splice(p[0], NULL, up, NULL, n, SPLICE_F_MOVE);
            if (m <= 0) { perror("splice"); return 1; }
            n -= m;
        }
    }
    shutdown(up, SHUT_WR);
    return 0;
}
