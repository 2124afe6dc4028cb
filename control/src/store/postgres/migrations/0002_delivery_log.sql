-- The delivery log: a placeholder until the delivery-log half lands.
SELECT 1;
