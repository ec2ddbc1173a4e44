// acpi_call.c
