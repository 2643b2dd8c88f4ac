"""规格的三阶段训练脚本 `python -m ugt_hf.spec.scripts.train_stage{1,2,3} --train_data ... --output_dir ...`。

都是生产阶段入口（与 recipes/stage{1,2,3}.py 相同）的别名：规格的参数名（--train_data --eval_data --pretrained
--batch_size --max_epochs --lambda_contrastive --dpo_beta --deepspeed --zero_stage ...）由配置解析器认作别名。
"""
