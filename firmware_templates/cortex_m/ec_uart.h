/* The UART a Cortex-M firmware talks through: one driver from uart/<driver>.c, chosen by the
 * target file's uart.driver (a new driver is a new file there). */
#ifndef EC_UART_H
#define EC_UART_H

#include <stdint.h>

void ec_uart_init(uint32_t clock_hz);
int ec_uart_rx_ready(void);
uint8_t ec_uart_rx(void);
void ec_uart_tx(uint8_t c);

#endif
