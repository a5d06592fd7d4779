# check_classifier.cmake: run build/bin/classifier briefly and check that it learns.
#   cmake -DCLASSIFIER=path/to/classifier -P check_classifier.cmake
# 15 epochs (570 optimizer steps) take about a second each run; with the default seed they end at
# val_acc 0.970 (OneCycleLR), 0.967 (--plateau) and 0.967 (--bf16); chance is 0.5, so
# --min-accuracy 0.9 tells learning from a broken loop with room to spare.

function(fail msg)
  message(FATAL_ERROR "example_classifier: ${msg}\n--- output ---\n${out}${err}")
endfunction()

foreach(extra "" "--plateau" "--bf16")
  execute_process(COMMAND ${CLASSIFIER} --epochs 15 --min-accuracy 0.9 ${extra}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message("${out}")
  if(NOT rc EQUAL 0)
    fail("classifier ${extra}: exit status ${rc}")
  endif()
  # one line per epoch, epochs 0..14, and the step count: ceil(75 batches / 2) * 15 = 570
  if(NOT out MATCHES "\nepoch +0 +train_loss [0-9.]+ +val_loss [0-9.]+ +val_acc [0-9.]+ +lr [-+0-9.e]+\n" OR
     NOT out MATCHES "\nepoch +14 " OR out MATCHES "\nepoch +15 ")
    fail("classifier ${extra}: expected one result line for each of epochs 0..14")
  endif()
  if(NOT out MATCHES "after 15 epochs, 570 optimizer steps")
    fail("classifier ${extra}: expected 570 optimizer steps")
  endif()
  if(out MATCHES "warning: logged val_acc")
    fail("classifier ${extra}: the logged val_acc differs from the counted one")
  endif()
endforeach()

execute_process(COMMAND ${CLASSIFIER} --epochs 1 --min-accuracy 0.99
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 1 OR NOT out MATCHES "FAIL: final val_acc")
  fail("--epochs 1 --min-accuracy 0.99: status ${rc}, expected 1 and a FAIL line")
endif()

# --checkpoint-dir / --save-weights: the files, and the last line as before
get_filename_component(scratch "${CMAKE_CURRENT_BINARY_DIR}/classifier-ckpt" ABSOLUTE)
file(REMOVE_RECURSE "${scratch}")
execute_process(COMMAND ${CLASSIFIER} --epochs 2 --checkpoint-dir ${scratch}/ckpt --checkpoint-every 20
                        --save-weights ${scratch}/w.safetensors
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT EXISTS "${scratch}/ckpt/last.ckpt" OR NOT EXISTS "${scratch}/w.safetensors")
  fail("--checkpoint-dir / --save-weights: status ${rc}, expected 0, ckpt/last.ckpt and w.safetensors")
endif()
if(NOT out MATCHES "\nfinal val_acc [0-9.]+ .best [0-9.]+. after 2 epochs, 76 optimizer steps, [0-9.]+ s\n$")
  fail("--checkpoint-dir: the last line changed")
endif()
file(REMOVE_RECURSE "${scratch}")

execute_process(COMMAND ${CLASSIFIER} --help RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "usage: classifier")
  fail("--help: status ${rc}, expected 0 and a usage text")
endif()

execute_process(COMMAND ${CLASSIFIER} --no-such-option RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 2 OR NOT err MATCHES "unknown option '--no-such-option'")
  fail("a bad option: status ${rc}, expected 2 and a message naming it")
endif()
message("example_classifier: ok")
