# check_ddp.cmake: the classifier and the GAN with --devices 2 (DDP, ember's launcher, Gloo on
# 127.0.0.1): rank 0 alone prints its report, and the run trains (label ddp).
#   cmake -DCLASSIFIER=... -DGAN=... -DOUT=dir -P check_ddp.cmake
# 15 epochs of the classifier on 2 processes: 38 batches of 32 per process and epoch, A = 2, so
# ceil(38 / 2) * 15 = 285 optimizer steps; with the default seed it ends near val_acc 0.9 and above
# 0.8 (chance is 0.5).

function(fail msg)
  message(FATAL_ERROR "example_ddp: ${msg}\n--- output ---\n${out}${err}")
endfunction()

execute_process(COMMAND ${CLASSIFIER} --epochs 15 --min-accuracy 0.8 --devices 2
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 300)
message("${out}")
if(NOT rc EQUAL 0)
  fail("classifier --devices 2: exit status ${rc}")
endif()
string(REGEX MATCHALL "final val_acc [0-9.]+ \\(best [0-9.]+\\) after 15 epochs, 285 optimizer steps, [0-9.]+ s" finals "${out}")
list(LENGTH finals n)
if(NOT n EQUAL 1)
  fail("classifier --devices 2: expected one final line (rank 0's) with 285 optimizer steps, got ${n}")
endif()
string(REGEX MATCHALL "\nepoch +14 " last "${out}")
list(LENGTH last n)
if(NOT n EQUAL 1 OR NOT out MATCHES "DDP: 2 processes")
  fail("classifier --devices 2: expected rank 0's epoch lines once and the DDP line")
endif()

file(REMOVE_RECURSE ${OUT})
execute_process(COMMAND ${GAN} --epochs 2 --steps-per-epoch 40 --devices 2 --no-progress --out ${OUT}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 300)
message("${out}")
if(NOT rc EQUAL 0)
  fail("gan --devices 2: exit status ${rc}")
endif()
string(REGEX MATCHALL "modes covered: [0-8]/8" lines "${out}")
list(LENGTH lines n)
if(NOT n EQUAL 1 OR NOT EXISTS ${OUT}/final.png OR NOT EXISTS ${OUT}/metrics.csv)
  fail("gan --devices 2: expected one report (rank 0's), final.png and metrics.csv")
endif()
# each process takes half of the 40 batches: 20 per epoch, a G and a D step each
if(NOT out MATCHES "trained 40 batches .* global_step 80 ")
  fail("gan --devices 2: expected 40 batches (20 per epoch per process) and global_step 80")
endif()

# ModelCheckpoint under DDP: both ranks call the (collective) save and keep the same bookkeeping, rank 0
# alone writes; a 2-process run resumed with --resume last from the end of its first epoch ends with the
# weights of the uninterrupted 2-process run, byte for byte (--plateau: the schedule does not depend on
# --epochs)
set(ck ${OUT}-ckpt)
file(REMOVE_RECURSE ${ck})
foreach(run "ref;2" "part;1" "part;2;--resume;last")
  list(GET run 0 name)
  list(GET run 1 epochs)
  set(extra "")
  list(LENGTH run len)
  if(len GREATER 2)
    list(SUBLIST run 2 -1 extra)
  endif()
  execute_process(COMMAND ${CLASSIFIER} --plateau --epochs ${epochs} --devices 2 --checkpoint-dir ${ck}/${name}
                          --checkpoint-every 10 --save-weights ${ck}/${name}-${epochs}.safetensors ${extra}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 300)
  if(NOT rc EQUAL 0)
    fail("classifier --devices 2 --checkpoint-dir (${run}): exit status ${rc}")
  endif()
endforeach()
if(NOT out MATCHES "^resumed from [^\n]*/part/last.ckpt at epoch 0, batch 37, global_step 19\n")
  fail("classifier --devices 2 --resume last: expected 'resumed from .../part/last.ckpt at epoch 0, batch 37, global_step 19' first")
endif()
file(GLOB files RELATIVE ${ck}/part ${ck}/part/*)
if(NOT files STREQUAL "last.ckpt")
  fail("classifier --devices 2 --checkpoint-dir: expected last.ckpt alone, got ${files}")
endif()
file(SHA256 ${ck}/ref-2.safetensors a)
file(SHA256 ${ck}/part-2.safetensors b)
if(NOT a STREQUAL b)
  fail("classifier --devices 2: the run resumed with --resume last ended with other weights than the uninterrupted one")
endif()
file(REMOVE_RECURSE ${ck})
