/* tester/tjson - cJSON helpers the tester needs everywhere.
 *
 * cJSON_AddItemToObject copies the key; when that allocation fails it
 * returns false and leaves the item with the caller, a leak at every call
 * site that ignores the result. tjson_add takes the item in all cases. */
#ifndef VLM_TESTER_TJSON_H
#define VLM_TESTER_TJSON_H

#include <stdbool.h>

#include <cjson/cJSON.h>

/* Add item under key; on failure (item NULL, or no memory for the key) the
 * item is freed and false returned. */
static inline bool tjson_add(cJSON *obj, const char *key, cJSON *item) {
    if (!item) return false;
    if (obj && cJSON_AddItemToObject(obj, key, item)) return true;
    cJSON_Delete(item);
    return false;
}

/* Append item to arr; if arr is NULL (its creation failed) the item is
 * freed and false returned. */
static inline bool tjson_push(cJSON *arr, cJSON *item) {
    if (!item) return false;
    if (arr && cJSON_AddItemToArray(arr, item)) return true;
    cJSON_Delete(item);
    return false;
}

#endif
