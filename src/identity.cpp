#include "identity.h"

namespace session_cache {

bool user_id_acceptable(std::string_view id) noexcept
{
    if (id.empty() || id.size() > kMaxUserIdLength) {
        return false;
    }

    for (char ch : id) {
        auto c = static_cast<unsigned char>(ch);

        if (c < 0x20 || c == 0x7f) {
            return false;
        }
    }

    return true;
}


bool attr_value_acceptable(std::string_view value) noexcept
{
    return value.empty() || user_id_acceptable(value);
}


bool attr_name_acceptable(std::string_view name) noexcept
{
    if (name.empty() || name.size() > kMaxAttrNameLength
        || (name[0] >= '0' && name[0] <= '9') || name == "user_id")
    {
        return false;
    }

    for (char c : name) {
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
            return false;
        }
    }

    return true;
}

} // namespace session_cache
