/* ftlens head grid: click a (layer, head) cell to draw that head's token heatmap.
   D: {tokens, values[layer][head][pos]}; O: {id, unit, top: [layer, head]} (JSON from head_grid()). */
(function(){
var D=__DATA__;
var O=__OPTIONS__;
var grid=document.getElementById(O.id), out=document.getElementById(O.id+"-out"),
    lab=document.getElementById(O.id+"-lab");
function show(td){
  grid.querySelectorAll("td.ft-sel").forEach(function(c){c.classList.remove("ft-sel");});
  td.classList.add("ft-sel");
  var l=+td.dataset.l,h=+td.dataset.h,vals=D.values[l][h],m=0;
  vals.forEach(function(v){m=Math.max(m,Math.abs(v));});
  lab.textContent="Layer "+l+", head "+h+" ("+O.unit+" "+td.title.split(": ")[1]+")";
  out.innerHTML=""; var d=document.createElement("div"); d.id=O.id+"-cv"+l+"_"+h+"_"+Date.now(); out.appendChild(d);
  if(typeof CircuitsVis!=="undefined"){CircuitsVis.render(d.id,CircuitsVis.ColoredTokens,
    {tokens:D.tokens,values:vals,minValue:-(m||1),maxValue:(m||1)});}
}
grid.addEventListener("click",function(e){var td=e.target.closest("td");if(td)show(td);});
var first=grid.querySelector('td[data-l="'+O.top[0]+'"][data-h="'+O.top[1]+'"]');
if(first)show(first);
})();
