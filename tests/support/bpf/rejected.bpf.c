// SPDX-License-Identifier: GPL-2.0
/* Test object the verifier must reject (a read through a made-up pointer):
 * its log shows the verifier's own words and, where the kernel prints them
 * (6.2+), source lines from the object's line_info. */
typedef unsigned int __u32;

__attribute__((section("socket"), used)) int rejected(void *ctx)
{
	int *p = (int *)(long)0x1000;
	return *p;
}

char LICENSE[] __attribute__((section("license"), used)) = "GPL";
