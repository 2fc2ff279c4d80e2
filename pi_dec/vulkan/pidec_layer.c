/*
 * VK_LAYER_PIDEC_drop_missing_extensions: a tiny Vulkan layer that lets SAPIEN 2.2.2 run on
 * Mesa's lavapipe (CPU) renderer.
 *
 * SAPIEN always enables VK_KHR_external_semaphore_fd (for CUDA interop), which lavapipe does not
 * offer, so vkCreateDevice fails with VK_ERROR_EXTENSION_NOT_PRESENT. The loader accepts extensions
 * that an enabled layer declares in its manifest ("device_extensions"), so this layer declares it
 * and, in vkCreateDevice, drops every requested extension the driver below does not support before
 * calling down the chain. Nothing else is intercepted.
 */
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <vulkan/vulkan.h>
#include <vulkan/vk_layer.h>

#define EXPORT __attribute__((visibility("default")))
#define MAX_HANDLES 64

/* Dispatchable handles start with a pointer to the loader's dispatch table; instances and their
 * physical devices share it, so it is the key to find an instance's next-layer entry points. */
static void *dispatch_key(const void *handle) { return *(void *const *)handle; }

/* Next-layer entry points are resolved once, at creation: asking the loader later with the app's
 * handle can return the top of the chain again (seen with Mesa's device-select layer). */
typedef struct {
    void *key;
    PFN_vkGetInstanceProcAddr next_gipa;
    PFN_vkDestroyInstance next_destroy;
    PFN_vkCreateDevice next_create_device;
    PFN_vkEnumerateDeviceExtensionProperties next_enum_device_ext;
} InstanceEntry;
typedef struct { void *key; PFN_vkGetDeviceProcAddr next_gdpa; PFN_vkDestroyDevice next_destroy; } DeviceEntry;

static InstanceEntry instances[MAX_HANDLES];
static DeviceEntry devices[MAX_HANDLES];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static InstanceEntry *find_instance(void *key) {
    for (int i = 0; i < MAX_HANDLES; i++)
        if (instances[i].key == key) return &instances[i];
    return NULL;
}

static DeviceEntry *find_device(void *key) {
    for (int i = 0; i < MAX_HANDLES; i++)
        if (devices[i].key == key) return &devices[i];
    return NULL;
}

EXPORT PFN_vkVoidFunction VKAPI_CALL pidec_GetInstanceProcAddr(VkInstance instance, const char *name);
EXPORT PFN_vkVoidFunction VKAPI_CALL pidec_GetDeviceProcAddr(VkDevice device, const char *name);

static VKAPI_ATTR VkResult VKAPI_CALL pidec_CreateInstance(const VkInstanceCreateInfo *info,
                                                           const VkAllocationCallbacks *alloc,
                                                           VkInstance *out) {
    VkLayerInstanceCreateInfo *link = (VkLayerInstanceCreateInfo *)info->pNext;
    while (link && !(link->sType == VK_STRUCTURE_TYPE_LOADER_INSTANCE_CREATE_INFO &&
                     link->function == VK_LAYER_LINK_INFO))
        link = (VkLayerInstanceCreateInfo *)link->pNext;
    if (!link) return VK_ERROR_INITIALIZATION_FAILED;

    PFN_vkGetInstanceProcAddr next_gipa = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
    link->u.pLayerInfo = link->u.pLayerInfo->pNext; /* advance the chain for the next layer */
    PFN_vkCreateInstance next_create = (PFN_vkCreateInstance)next_gipa(VK_NULL_HANDLE, "vkCreateInstance");
    VkResult res = next_create(info, alloc, out);
    if (res != VK_SUCCESS) return res;

    InstanceEntry entry = {
        dispatch_key(*out), next_gipa,
        (PFN_vkDestroyInstance)next_gipa(*out, "vkDestroyInstance"),
        (PFN_vkCreateDevice)next_gipa(*out, "vkCreateDevice"),
        (PFN_vkEnumerateDeviceExtensionProperties)next_gipa(*out, "vkEnumerateDeviceExtensionProperties"),
    };
    pthread_mutex_lock(&lock);
    InstanceEntry *slot = find_instance(NULL);
    if (slot) *slot = entry;
    pthread_mutex_unlock(&lock);
    return slot ? VK_SUCCESS : VK_ERROR_TOO_MANY_OBJECTS;
}

static VKAPI_ATTR void VKAPI_CALL pidec_DestroyInstance(VkInstance instance, const VkAllocationCallbacks *alloc) {
    pthread_mutex_lock(&lock);
    InstanceEntry *entry = find_instance(dispatch_key(instance));
    PFN_vkDestroyInstance next_destroy = entry ? entry->next_destroy : NULL;
    if (entry) entry->key = NULL;
    pthread_mutex_unlock(&lock);
    if (next_destroy) next_destroy(instance, alloc);
}

static VKAPI_ATTR VkResult VKAPI_CALL pidec_CreateDevice(VkPhysicalDevice gpu, const VkDeviceCreateInfo *info,
                                                         const VkAllocationCallbacks *alloc, VkDevice *out) {
    VkLayerDeviceCreateInfo *link = (VkLayerDeviceCreateInfo *)info->pNext;
    while (link && !(link->sType == VK_STRUCTURE_TYPE_LOADER_DEVICE_CREATE_INFO &&
                     link->function == VK_LAYER_LINK_INFO))
        link = (VkLayerDeviceCreateInfo *)link->pNext;
    if (!link) return VK_ERROR_INITIALIZATION_FAILED;

    PFN_vkGetInstanceProcAddr next_gipa = link->u.pLayerInfo->pfnNextGetInstanceProcAddr;
    PFN_vkGetDeviceProcAddr next_gdpa = link->u.pLayerInfo->pfnNextGetDeviceProcAddr;
    link->u.pLayerInfo = link->u.pLayerInfo->pNext;

    pthread_mutex_lock(&lock);
    InstanceEntry *inst = find_instance(dispatch_key(gpu));
    PFN_vkEnumerateDeviceExtensionProperties enum_ext = inst ? inst->next_enum_device_ext : NULL;
    PFN_vkCreateDevice next_create = inst ? inst->next_create_device : NULL;
    pthread_mutex_unlock(&lock);
    if (!next_create) next_create = (PFN_vkCreateDevice)next_gipa(VK_NULL_HANDLE, "vkCreateDevice");
    if (!next_create) return VK_ERROR_INITIALIZATION_FAILED;

    /* The extensions the driver really supports. */
    uint32_t n_supported = 0;
    VkExtensionProperties *supported = NULL;
    if (enum_ext && enum_ext(gpu, NULL, &n_supported, NULL) == VK_SUCCESS && n_supported) {
        supported = calloc(n_supported, sizeof(*supported));
        if (enum_ext(gpu, NULL, &n_supported, supported) != VK_SUCCESS) n_supported = 0;
    }

    /* Keep only the requested extensions the driver supports. If the query failed, pass all. */
    const char **kept = calloc(info->enabledExtensionCount + 1, sizeof(*kept));
    uint32_t n_kept = 0;
    for (uint32_t i = 0; i < info->enabledExtensionCount; i++) {
        const char *want = info->ppEnabledExtensionNames[i];
        int ok = (supported == NULL);
        for (uint32_t j = 0; !ok && j < n_supported; j++)
            ok = strcmp(want, supported[j].extensionName) == 0;
        if (ok) kept[n_kept++] = want;
    }
    VkDeviceCreateInfo filtered = *info;
    filtered.enabledExtensionCount = n_kept;
    filtered.ppEnabledExtensionNames = kept;

    VkResult res = next_create(gpu, &filtered, alloc, out);
    free(kept);
    free(supported);
    if (res != VK_SUCCESS) return res;

    pthread_mutex_lock(&lock);
    DeviceEntry *slot = find_device(NULL);
    if (slot) *slot = (DeviceEntry){dispatch_key(*out), next_gdpa,
                                    (PFN_vkDestroyDevice)next_gdpa(*out, "vkDestroyDevice")};
    pthread_mutex_unlock(&lock);
    return slot ? VK_SUCCESS : VK_ERROR_TOO_MANY_OBJECTS;
}

static VKAPI_ATTR void VKAPI_CALL pidec_DestroyDevice(VkDevice device, const VkAllocationCallbacks *alloc) {
    pthread_mutex_lock(&lock);
    DeviceEntry *entry = find_device(dispatch_key(device));
    PFN_vkDestroyDevice next_destroy = entry ? entry->next_destroy : NULL;
    if (entry) entry->key = NULL;
    pthread_mutex_unlock(&lock);
    if (next_destroy) next_destroy(device, alloc);
}

EXPORT PFN_vkVoidFunction VKAPI_CALL pidec_GetDeviceProcAddr(VkDevice device, const char *name) {
    if (!strcmp(name, "vkGetDeviceProcAddr")) return (PFN_vkVoidFunction)pidec_GetDeviceProcAddr;
    if (!strcmp(name, "vkDestroyDevice")) return (PFN_vkVoidFunction)pidec_DestroyDevice;
    pthread_mutex_lock(&lock);
    DeviceEntry *entry = find_device(dispatch_key(device));
    PFN_vkGetDeviceProcAddr next_gdpa = entry ? entry->next_gdpa : NULL;
    pthread_mutex_unlock(&lock);
    return next_gdpa ? next_gdpa(device, name) : NULL;
}

EXPORT PFN_vkVoidFunction VKAPI_CALL pidec_GetInstanceProcAddr(VkInstance instance, const char *name) {
    if (!strcmp(name, "vkGetInstanceProcAddr")) return (PFN_vkVoidFunction)pidec_GetInstanceProcAddr;
    if (!strcmp(name, "vkGetDeviceProcAddr")) return (PFN_vkVoidFunction)pidec_GetDeviceProcAddr;
    if (!strcmp(name, "vkCreateInstance")) return (PFN_vkVoidFunction)pidec_CreateInstance;
    if (!strcmp(name, "vkDestroyInstance")) return (PFN_vkVoidFunction)pidec_DestroyInstance;
    if (!strcmp(name, "vkCreateDevice")) return (PFN_vkVoidFunction)pidec_CreateDevice;
    if (!strcmp(name, "vkDestroyDevice")) return (PFN_vkVoidFunction)pidec_DestroyDevice;
    if (instance == VK_NULL_HANDLE) return NULL;
    pthread_mutex_lock(&lock);
    InstanceEntry *entry = find_instance(dispatch_key(instance));
    PFN_vkGetInstanceProcAddr next_gipa = entry ? entry->next_gipa : NULL;
    pthread_mutex_unlock(&lock);
    return next_gipa ? next_gipa(instance, name) : NULL;
}
