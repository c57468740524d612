/* UART driver: STM32F1/F2/F4 USART.
 * SR 0x0 (b5 RXNE, b7 TXE), DR 0x4, BRR 0x8, CR1 0xC (b13 UE, b3 TE, b2 RE) */
#define UART_ISR 0x00
#define UART_RDR 0x04
#define UART_TDR 0x04
#define UART_BRR 0x08
#define UART_CR1 0x0C
#define UART_CR1_ENABLE ((1u << 13) | (1u << 3) | (1u << 2))
#include "stm32.h"
