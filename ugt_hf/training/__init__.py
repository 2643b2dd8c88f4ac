"""训练：参数、损失、指标、UGTTrainer、UGTDPOTrainer 与回调。"""
