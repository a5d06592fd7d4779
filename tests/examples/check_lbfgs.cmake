# check_lbfgs.cmake: run build/bin/lbfgs and check that LBFGS reaches the optimum in both modes.
#   cmake -DLBFGS=path/to/lbfgs -P check_lbfgs.cmake
# The program computes the optimum of its regularised logistic regression by Newton's method in
# double and exits 1 when a mode ends farther than --check from it. LBFGS runs in float32, so it
# stops where the float32 loss stops changing: 1.6e-5 away without a line search, 3.2e-5 with
# strong Wolfe (both equal to Python torch 1.13's LBFGS on the same data and initial weights, with
# 41 and 33 closure evaluations); 1e-3 leaves room for other BLAS builds.

function(fail msg)
  message(FATAL_ERROR "example_lbfgs: ${msg}\n--- output ---\n${out}${err}")
endfunction()

foreach(extra "" "--strong-wolfe")
  execute_process(COMMAND ${LBFGS} --mode both --check 1e-3 ${extra}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message("${out}")
  if(NOT rc EQUAL 0)
    fail("lbfgs ${extra}: exit status ${rc}")
  endif()
  foreach(mode manual automatic)
    if(NOT out MATCHES "\n${mode} +loss [0-9.]+ +grad_norm [-+0-9.e]+ +distance [-+0-9.e]+ +\\(global_step 10,")
      fail("lbfgs ${extra}: no result line for ${mode} with global_step 10")
    endif()
  endforeach()
endforeach()

# the --check threshold is honoured: nothing gets within 1e-12 in float32
execute_process(COMMAND ${LBFGS} --mode manual --steps 2 --check 1e-12
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 1 OR NOT out MATCHES "FAIL: manual ended")
  fail("--check 1e-12: status ${rc}, expected 1 and a FAIL line")
endif()

execute_process(COMMAND ${LBFGS} --help RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "usage: lbfgs")
  fail("--help: status ${rc}, expected 0 and a usage text")
endif()

execute_process(COMMAND ${LBFGS} --no-such-option RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "unknown option '--no-such-option'")
  fail("a bad option: status ${rc}, expected 2 and a message naming it")
endif()

execute_process(COMMAND ${LBFGS} --mode sideways RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "--mode must be manual, automatic or both")
  fail("--mode sideways: status ${rc}, expected 2 and a message")
endif()
message("example_lbfgs: ok")
