/* Classify one image with Tessera from C: ./classify tessera.toml photo.jpg (docs/EMBEDDING.md). */
#include <stdio.h>
#include <stdlib.h>
#include "tessera.h"

int main(int argc, char **argv) {
    if (argc != 3) return fprintf(stderr, "usage: %s CONFIG IMAGE\n", argv[0]), 2;
    FILE *f = fopen(argv[2], "rb");
    static uint8_t image[16 << 20];
    size_t len = f ? fread(image, 1, sizeof image, f) : 0;
    TesseraHost *host;
    char *json, *error;
    TesseraStatus status = tessera_host_new(argv[1], &host, &error);
    if (status == TESSERA_STATUS_OK) status = tessera_classify_json(host, NULL, image, len, &json, &error);
    if (status != TESSERA_STATUS_OK) return fprintf(stderr, "%s: %s\n", tessera_status_name(status), error), 1;
    puts(json);
    tessera_string_free(json);
    tessera_host_free(host);
    return 0;
}
