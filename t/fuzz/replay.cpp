/*
 * A plain main() for the fuzz targets, so `make test` replays the kept
 * corpus with g++ alone (no clang, no libFuzzer): every file named on the
 * command line, or every file in a directory named there, is passed to
 * LLVMFuzzerTestOneInput once. A failed invariant aborts.
 */
#include <dirent.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int
run_file(const std::string &path)
{
    std::ifstream f(path, std::ios::binary);

    if (!f) {
        std::fprintf(stderr, "replay: cannot read %s\n", path.c_str());
        return 1;
    }

    std::vector<char> buf((std::istreambuf_iterator<char>(f)),
                          std::istreambuf_iterator<char>());
    /* an exact-size heap copy, so a sanitizer sees reads past the end */
    auto *data = new uint8_t[buf.size() ? buf.size() : 1];
    std::copy(buf.begin(), buf.end(), data);
    LLVMFuzzerTestOneInput(data, buf.size());
    delete[] data;
    return 0;
}

int
main(int argc, char **argv)
{
    int files = 0, failed = 0;

    for (int i = 1; i < argc; i++) {
        struct stat st;

        if (stat(argv[i], &st) != 0) {
            continue;  /* an empty corpus directory may not exist */
        }

        if (!S_ISDIR(st.st_mode)) {
            failed += run_file(argv[i]);
            files++;
            continue;
        }

        DIR *d = opendir(argv[i]);

        if (d == nullptr) {
            std::perror(argv[i]);
            return 1;
        }

        while (struct dirent *e = readdir(d)) {
            std::string path = std::string(argv[i]) + "/" + e->d_name;

            if (stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
                failed += run_file(path);
                files++;
            }
        }
        closedir(d);
    }

    std::printf("%s: %d inputs replayed\n", argv[0], files);
    return failed ? 1 : 0;
}
