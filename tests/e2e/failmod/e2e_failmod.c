// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * e2e_failmod: does nothing; exists so the dkms-hook e2e tests have a DKMS
 * module whose build can be made to fail on demand.
 */
#include <linux/init.h>
#include <linux/module.h>

#ifdef E2E_BREAK
#error "e2e-failmod: build deliberately broken: this kernel is listed in /etc/e2e-failmod-break"
#endif

static int __init e2e_failmod_init(void)
{
	return 0;
}

static void __exit e2e_failmod_exit(void)
{
}

module_init(e2e_failmod_init);
module_exit(e2e_failmod_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("dkms-hook e2e test module (breakable build)");
MODULE_VERSION("1.0");
