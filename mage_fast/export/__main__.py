from mage_fast.export.hf import main

main()
