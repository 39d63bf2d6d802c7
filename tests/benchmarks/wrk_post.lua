-- POST one JSON prediction request per call, with a fresh unit id each time
-- (so an experiment splits the traffic) and fixed feature values.
--
--   wrk -s wrk_post.lua URL -- predict   body {"unit_id": ..., "features": {...}}
--   wrk -s wrk_post.lua URL -- mlflow    body {"dataframe_split": {...}} (no unit id)

local features = {0.5, -1.2, 0.3, 0.0, 1.1, -0.4, 0.8, 0.05}
local threads = {}

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1] or "predict"
  tid = tonumber(tid) or 0
  counter = 0
  local names, values = {}, {}
  for i, v in ipairs(features) do
    names[i] = string.format('"f%d"', i - 1)
    values[i] = string.format("%.17g", v)
  end
  if mode == "mlflow" then
    fixed_body = '{"dataframe_split": {"columns": [' .. table.concat(names, ", ")
      .. '], "data": [[' .. table.concat(values, ", ") .. ']]}}'
  else
    local pairs_ = {}
    for i = 1, #features do
      pairs_[i] = names[i] .. ": " .. values[i]
    end
    body_tail = '", "features": {' .. table.concat(pairs_, ", ") .. '}}'
  end
end

function request()
  counter = counter + 1
  local body
  if fixed_body then
    body = fixed_body
  else
    body = '{"unit_id": "user-' .. tid .. '-' .. counter .. body_tail
  end
  return wrk.format(nil, nil, nil, body)
end
