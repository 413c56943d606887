-- version.lua: the library revision. FlowFabric's own library answers '34';
-- ff_celery's answers 'ff_celery-<revision>', so FlowFabric's server replaces
-- it with its own and ff_celery's loader never replaces FlowFabric's.
-- The loader reads the single quoted literal below; bump the revision
-- whenever any function's KEYS/ARGV contract or behaviour changes.

redis.register_function('ff_version', function(keys, args)
  return 'ff_celery-5'
end)
