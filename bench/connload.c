/*
 * connload: loopback TCP connection generator for the ttcp benchmarks.
 *
 *   connload server ADDR PORT
 *       listen on ADDR:PORT; accept each connection and close it at once.
 *       Prints "listening ADDR PORT" when ready.
 *   connload client SRC NSRC DST PORT N [PROCS]
 *       N connections to DST:PORT, made by PROCS processes (default 1), each
 *       one connection at a time: bind the source to SRC, SRC+1, ...
 *       (NSRC addresses, rotating), connect, read until the server's FIN,
 *       close. Prints "N SECONDS CONN_PER_SEC FAILURES".
 *
 * The server closes first, so TIME_WAIT stays on the server side and the
 * client never runs out of ephemeral ports. Every connection ends two TCP
 * sockets: the server's (local port PORT) and the client's (remote PORT).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

static double mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int parse_addr(const char *text, int port, struct sockaddr_in *out)
{
	memset(out, 0, sizeof(*out));
	out->sin_family = AF_INET;
	out->sin_port = htons((unsigned short)port);
	return inet_pton(AF_INET, text, &out->sin_addr) == 1 ? 0 : -1;
}

static int serve(const char *addr, int port)
{
	struct sockaddr_in sa;
	int one = 1;
	int ls;

	if (parse_addr(addr, port, &sa) < 0) {
		fprintf(stderr, "connload: bad address %s\n", addr);
		return 64;
	}
	ls = socket(AF_INET, SOCK_STREAM, 0);
	if (ls < 0) {
		perror("socket");
		return 1;
	}
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 4096) < 0) {
		perror("bind/listen");
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	printf("listening %s %d\n", addr, port);
	fflush(stdout);
	for (;;) {
		int c = accept(ls, NULL, NULL);

		if (c >= 0) {
			close(c);
			continue;
		}
		if (errno != EINTR && errno != ECONNABORTED && errno != EMFILE && errno != ENFILE) {
			perror("accept");
			return 1;
		}
	}
}

/* One process's share: n sequential connections; returns the failures. */
static long connect_loop(const struct sockaddr_in *src0, int nsrc, const struct sockaddr_in *dst,
			 long n, long first)
{
	long fails = 0;
	char buf[256];

	for (long i = 0; i < n; i++) {
		struct sockaddr_in src = *src0;
		int one = 1;
		int s = socket(AF_INET, SOCK_STREAM, 0);

		if (s < 0) {
			fails++;
			continue;
		}
		src.sin_addr.s_addr = htonl(ntohl(src0->sin_addr.s_addr) + (unsigned)((first + i) % nsrc));
		setsockopt(s, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		if (bind(s, (const struct sockaddr *)&src, sizeof(src)) < 0 ||
		    connect(s, (const struct sockaddr *)dst, sizeof(*dst)) < 0) {
			fails++;
			close(s);
			continue;
		}
		while (read(s, buf, sizeof(buf)) > 0)
			;
		close(s);
	}
	return fails;
}

static int client(const char *src_text, int nsrc, const char *dst_text, int port, long n, int procs)
{
	struct sockaddr_in src, dst;
	long fails = 0;
	double t0, dt;

	if (parse_addr(src_text, 0, &src) < 0 || parse_addr(dst_text, port, &dst) < 0 ||
	    nsrc < 1 || n < 0 || procs < 1) {
		fprintf(stderr, "connload: bad client arguments\n");
		return 64;
	}
	t0 = mono();
	if (procs == 1) {
		fails = connect_loop(&src, nsrc, &dst, n, 0);
	} else {
		for (int p = 0; p < procs; p++) {
			long share = n / procs + (p < n % procs ? 1 : 0);
			pid_t pid = fork();

			if (pid < 0) {
				perror("fork");
				return 1;
			}
			if (pid == 0) {
				long f = connect_loop(&src, nsrc, &dst, share, p);

				_exit(f > 255 ? 255 : (int)f);
			}
		}
		for (int p = 0; p < procs; p++) {
			int status = 0;

			if (wait(&status) > 0 && WIFEXITED(status))
				fails += WEXITSTATUS(status);
		}
	}
	dt = mono() - t0;
	printf("%ld %.4f %.0f %ld\n", n, dt, (double)(n - fails) / dt, fails);
	return fails ? 2 : 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "server") == 0)
		return serve(argv[2], atoi(argv[3]));
	if ((argc == 7 || argc == 8) && strcmp(argv[1], "client") == 0)
		return client(argv[2], atoi(argv[3]), argv[4], atoi(argv[5]), atol(argv[6]),
			      argc == 8 ? atoi(argv[7]) : 1);
	fprintf(stderr, "usage: connload server ADDR PORT\n"
			"       connload client SRC NSRC DST PORT N [PROCS]\n");
	return 64;
}
