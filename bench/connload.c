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
 *   connload bulk SRC DST PORT BYTES
 *       one connection from SRC to DST:PORT (a receiver forked for it): the
 *       client writes BYTES in 1 MiB writes, shuts its side, and waits for the
 *       receiver, which reads everything, to close. Prints "BYTES SECONDS
 *       BYTES_PER_SEC" (from connect to the receiver's close).
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

static int bulk(const char *src_text, const char *dst_text, int port, long long bytes)
{
	static char buf[1 << 20];
	struct sockaddr_in src, dst;
	long long left = bytes;
	int one = 1, ls, s;
	double t0, dt;
	pid_t pid;

	if (parse_addr(src_text, 0, &src) < 0 || parse_addr(dst_text, port, &dst) < 0 || bytes < 0) {
		fprintf(stderr, "connload: bad bulk arguments\n");
		return 64;
	}
	ls = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ls < 0 || bind(ls, (struct sockaddr *)&dst, sizeof(dst)) < 0 || listen(ls, 1) < 0) {
		perror("bulk listen");
		return 1;
	}
	pid = fork();
	if (pid < 0) {
		perror("fork");
		return 1;
	}
	if (pid == 0) { /* the receiver: read until EOF, then close */
		int c = accept(ls, NULL, NULL);

		if (c < 0)
			_exit(1);
		while (read(c, buf, sizeof(buf)) > 0)
			;
		close(c);
		_exit(0);
	}
	close(ls);
	s = socket(AF_INET, SOCK_STREAM, 0);
	t0 = mono();
	if (s < 0 || bind(s, (struct sockaddr *)&src, sizeof(src)) < 0 ||
	    connect(s, (struct sockaddr *)&dst, sizeof(dst)) < 0) {
		perror("bulk connect");
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return 1;
	}
	while (left > 0) {
		ssize_t n = write(s, buf, left < (long long)sizeof(buf) ? (size_t)left : sizeof(buf));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("bulk write");
			break;
		}
		left -= n;
	}
	shutdown(s, SHUT_WR);
	while (read(s, buf, sizeof(buf)) > 0)
		;
	dt = mono() - t0;
	close(s);
	waitpid(pid, NULL, 0);
	printf("%lld %.4f %.0f\n", bytes - left, dt, (double)(bytes - left) / dt);
	return left ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "server") == 0)
		return serve(argv[2], atoi(argv[3]));
	if ((argc == 7 || argc == 8) && strcmp(argv[1], "client") == 0)
		return client(argv[2], atoi(argv[3]), argv[4], atoi(argv[5]), atol(argv[6]),
			      argc == 8 ? atoi(argv[7]) : 1);
	if (argc == 6 && strcmp(argv[1], "bulk") == 0)
		return bulk(argv[2], argv[3], atoi(argv[4]), atoll(argv[5]));
	fprintf(stderr, "usage: connload server ADDR PORT\n"
			"       connload client SRC NSRC DST PORT N [PROCS]\n"
			"       connload bulk SRC DST PORT BYTES\n");
	return 64;
}
