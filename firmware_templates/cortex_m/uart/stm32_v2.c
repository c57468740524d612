/* UART driver: STM32F7/H7/L4 USART.
 * CR1 0x0 (b0 UE, b3 TE, b2 RE), BRR 0xC, ISR 0x1C (b5 RXNE, b7 TXE), RDR 0x24, TDR 0x28 */
#define UART_ISR 0x1C
#define UART_RDR 0x24
#define UART_TDR 0x28
#define UART_BRR 0x0C
#define UART_CR1 0x00
#define UART_CR1_ENABLE ((1u << 0) | (1u << 3) | (1u << 2))
#include "stm32.h"
