# meshelect on a generic ESP32-S3 module (as the port's ESP32_GENERIC* board, with the OTA
# partition table, the firmware frozen in and ESP-IDF's mDNS responder off).
set(IDF_TARGET esp32s3)

set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    boards/sdkconfig.ble
    boards/sdkconfig.spiram_sx
    boards/ESP32_GENERIC_S3/sdkconfig.board
    ${MICROPY_BOARD_DIR}/../sdkconfig.meshelect
)

set(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/manifest.py)
