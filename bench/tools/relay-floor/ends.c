// ends src PORT BYTES | ends sink PORT BYTES: a bulk TCP source (connects) and sink (listens, prints "ready"), in
// 1 MiB calls; the sink exits 0 once it has BYTES. bench/relay-floor.sh's two ends.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    if (argc != 4) { fprintf(stderr, "usage: ends src|sink PORT BYTES\n"); return 2; }
    long long n = atoll(argv[3]), done = 0;
    static char buf[1 << 20];
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2])), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (strcmp(argv[1], "sink") == 0) {
        if (bind(fd, (void *)&a, sizeof a) || listen(fd, 1)) { perror("listen"); return 1; }
        printf("ready\n"); fflush(stdout);
        int c = accept(fd, NULL, NULL);
        while (done < n) { ssize_t r = read(c, buf, sizeof buf); if (r <= 0) break; done += r; }
        if (done != n) { fprintf(stderr, "sink got %lld of %lld\n", done, n); return 1; }
        return 0;
    }
    if (connect(fd, (void *)&a, sizeof a)) { perror("connect"); return 1; }
    while (done < n) { long long k = n - done < (long long)sizeof buf ? n - done : (long long)sizeof buf; ssize_t w = write(fd, buf, k); if (w <= 0) return 1; done += w; }
    shutdown(fd, SHUT_WR);
    read(fd, buf, 1);
    return 0;
}
