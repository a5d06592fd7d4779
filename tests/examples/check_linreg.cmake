# check_linreg.cmake: run build/bin/linreg and check its fit and its command line.
#   cmake -DLINREG=path/to/linreg -P check_linreg.cmake
# The data are y = 3 x1 - 2 x2 + 0.5 + N(0, 0.1^2) noise over 256 points: least squares lands within
# about 0.1/sqrt(256) = 0.006 of the true weights, and 300 SGD steps at lr 0.1 converge to it
# (the error shrinks about 0.8x per step), so 0.05 is a safe bound; the final loss is close to
# the noise variance 0.01.

function(fail msg)
  message(FATAL_ERROR "example_linreg: ${msg}\n--- output ---\n${out}${err}")
endfunction()

execute_process(COMMAND ${LINREG} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}")
if(NOT rc EQUAL 0)
  fail("exit status ${rc}")
endif()

# Numbers are compared in units of 1e-4 (the program prints 4 decimals; cmake's math is integer).
foreach(row "w1;30000" "w2;-20000" "b;5000")
  list(GET row 0 name)
  list(GET row 1 want)
  if(NOT out MATCHES "\n${name} +[-0-9.]+ +(-?[0-9]+\\.[0-9][0-9][0-9][0-9])\n")
    fail("no line '${name} <true> <fitted>'")
  endif()
  set(got ${CMAKE_MATCH_1})
  # digit by digit: string(REGEX REPLACE) re-anchors ^ after each match and math() reads 0-prefixed
  # numbers as octal, so no leading-zero stripping
  string(REGEX MATCH "^(-?)([0-9]+)\\.([0-9])([0-9])([0-9])([0-9])$" _ "${got}")
  math(EXPR got_e4 "${CMAKE_MATCH_2} * 10000 + ${CMAKE_MATCH_3} * 1000 + ${CMAKE_MATCH_4} * 100 + ${CMAKE_MATCH_5} * 10 + ${CMAKE_MATCH_6}")
  if(CMAKE_MATCH_1 STREQUAL "-")
    math(EXPR got_e4 "-${got_e4}")
  endif()
  math(EXPR diff "${got_e4} - (${want})")
  if(diff GREATER 500 OR diff LESS -500)
    fail("${name} fitted ${got}: more than 0.05 from the true value")
  endif()
endforeach()

if(NOT out MATCHES "final loss 0\\.0[01][0-9]*")
  fail("final loss is not below 0.02")
endif()

execute_process(COMMAND ${LINREG} --help RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "usage: linreg")
  fail("--help: status ${rc}, expected 0 and a usage text")
endif()

execute_process(COMMAND ${LINREG} --no-such-option RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "unknown option '--no-such-option'")
  fail("a bad option: status ${rc}, expected 2 and a message naming it")
endif()

execute_process(COMMAND ${LINREG} --steps x RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "--steps needs an integer")
  fail("--steps x: status ${rc}, expected 2 and a message")
endif()
message("example_linreg: ok")
