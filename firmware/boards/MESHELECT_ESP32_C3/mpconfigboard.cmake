# meshelect on a generic ESP32-C3 module (as the port's ESP32_GENERIC* board, with the OTA
# partition table, the firmware frozen in and ESP-IDF's mDNS responder off).
set(IDF_TARGET esp32c3)

set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    boards/sdkconfig.riscv
    boards/sdkconfig.ble
    boards/ESP32_GENERIC_C3/sdkconfig.c3usb
    ${MICROPY_BOARD_DIR}/../sdkconfig.meshelect
)

set(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/manifest.py)
