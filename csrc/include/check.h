// ILLADA_CHECK(cond, message): throw with file:line when an argument or a call is wrong.
// Library code never exits or aborts; pybind11 turns these into Python exceptions
// (InvalidArgument -> ValueError, KernelError -> RuntimeError).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace illada {

struct InvalidArgument : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class E>
[[noreturn]] inline void raise_at(const char* file, int line, const std::string& msg) {
  std::ostringstream s;
  s << msg << " [" << file << ":" << line << "]";
  throw E(s.str());
}

}  // namespace illada

#define ILLADA_CHECK(cond, msg)                                                  \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::ostringstream illada_msg_;                                            \
      illada_msg_ << msg;                                                        \
      ::illada::raise_at<::illada::InvalidArgument>(__FILE__, __LINE__, illada_msg_.str()); \
    }                                                                            \
  } while (0)
